//! The OpenAPI 3.1 document of the control-plane API, generated from the Rust code: each
//! handler's `#[utoipa::path]` attribute (summary, tag, parameters, responses) and the
//! request and answer types (`#[derive(utoipa::ToSchema)]`, `#[derive(utoipa::IntoParams)]`,
//! the configuration types of `udn_core` and the store's types with their `openapi`
//! feature). The routers collect it themselves (`utoipa_axum`'s `OpenApiRouter` and
//! `routes!` in `routes.rs`), so a route cannot be served without being described.
//!
//! Served at `GET /v1/openapi.json` ([`json`]); `udn openapi` prints it, and
//! `docs/openapi.json` is that output, checked by a test.

use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Response, ResponseBuilder, Schema};
use utoipa::{OpenApi, PartialSchema, ToResponse, ToSchema};

/// What the document says besides the routes: the title, the authentication, the shared
/// error answer.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "UDN control plane API",
        version = "1",
        description = "Versioned REST API of `udn control`. Authenticate with the session cookie from /v1/auth/login (send X-CSRF-Token on changes) or `Authorization: Bearer udn_...` with an API token (POST /v1/tokens), which acts as its user restricted to its scopes (403 naming the scope a route needs; 401 once expired or revoked). Passwords and credential routes (/v1/auth/*, /v1/me/password, /v1/users, /v1/tokens) exist only on the HTTPS listener, not on the plain-HTTP `--api-listen` one. A customer sees and changes only its own objects (403 otherwise); an admin sees all. Validation errors (422) name each field at fault."
    ),
    servers((url = "/")),
    security(("cookie" = []), ("bearer" = [])),
    components(schemas(super::ErrorBody), responses(ErrorResponse)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// Adds the two ways to authenticate: the session cookie and an API token.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("udn_session"))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The error answer every route may give (`#/components/responses/Error`): an
/// [`super::ApiError`] rendered as `{"error": ..., "errors": [...]}`.
pub(crate) struct ErrorResponse;

impl<'r> ToResponse<'r> for ErrorResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        let body = Content::new(Some(RefOr::Ref(Ref::from_schema_name("Error"))));
        (
            "Error",
            ResponseBuilder::new()
                .description("error")
                .content("application/json", body)
                .build()
                .into(),
        )
    }
}

/// The document: [`ApiDoc`] with every route of the HTTPS listener.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, doc) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::routes::credential_routes())
        .merge(super::routes::machine_routes())
        .split_for_parts();
    doc
}

/// The document as pretty-printed JSON (what `GET /v1/openapi.json` serves and
/// `docs/openapi.json` holds), built once.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        let mut text = document()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"the OpenAPI document: {e}\"}}"));
        text.push('\n');
        text
    });
    &JSON
}

/// The object schema of `T` (a type that `deny_unknown_fields`) with the `extra`
/// fields (all required) beside its own and no `additionalProperties`: how an answer
/// that flattens `T` next to fields of its own is described (the derived `allOf` of a
/// closed object and the extra fields would accept no answer).
pub(crate) fn flattened<T: PartialSchema>(
    description: &str,
    extra: impl IntoIterator<Item = (&'static str, RefOr<Schema>)>,
) -> RefOr<Schema> {
    let mut b = ObjectBuilder::new().description(Some(description));
    if let RefOr::T(Schema::Object(o)) = T::schema() {
        for (name, s) in o.properties {
            b = b.property(name, s);
        }
        for name in o.required {
            b = b.required(name);
        }
    }
    for (name, s) in extra {
        b = b.property(name, s).required(name);
    }
    RefOr::T(Schema::Object(b.build()))
}

/// A reference to the component schema of `T`.
pub(crate) fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// Adds `T` and the schemas it refers to to `out` (for a hand-made [`ToSchema::schemas`]).
pub(crate) fn collect<T: ToSchema>(out: &mut Vec<(String, RefOr<Schema>)>) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

/// `udn openapi`: writes [`json`] to standard output.
pub fn print() -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(json().as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("writing the OpenAPI document: {e}"))
}

/// A schema written by hand, for an answer the handler builds as JSON (`serde_json::json!`)
/// rather than from a Rust type there is nothing to derive from. The JSON is in the
/// OpenAPI 3.1 (JSON Schema 2020-12) form; a test checks that it reads back unchanged.
macro_rules! hand_schema {
    ($(#[$attr:meta])* $name:ident, $schema:tt) => {
        $(#[$attr])*
        pub(crate) struct $name;

        impl $name {
            /// The schema as JSON.
            fn json() -> serde_json::Value {
                serde_json::json!($schema)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                hand(Self::json())
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// Reads a hand-written schema; one that does not read (a test catches it) is left
/// empty, which accepts anything.
fn hand(v: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(v).unwrap_or_default()
}

hand_schema!(
    /// A free-form JSON object: the answers of the billing and sign-up routes, which pass
    /// on what the billing store reports.
    JsonObject,
    {"type": "object", "additionalProperties": true}
);

hand_schema!(
    /// `GET /v1/traffic/cdn/top`: the range, then the 20 URLs and the 20 client networks
    /// with the most responses.
    TopAnswer,
    {
        "type": "object",
        "required": [
            "from",
            "to",
            "from_ms",
            "to_ms",
            "tz",
            "urls",
            "networks"
        ],
        "properties": {
            "customer": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "host": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "from": {
                "type": "string",
                "format": "date-time",
                "description": "Start of the range covered (widened to whole buckets), RFC 3339 in `tz`"
            },
            "to": {
                "type": "string",
                "format": "date-time",
                "description": "End of the range covered (exclusive), RFC 3339 in `tz`"
            },
            "from_ms": {
                "type": "integer"
            },
            "to_ms": {
                "type": "integer"
            },
            "tz": {
                "type": "string"
            },
            "urls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "host",
                        "path",
                        "requests",
                        "bytes"
                    ],
                    "properties": {
                        "host": {
                            "type": "string"
                        },
                        "path": {
                            "type": "string"
                        },
                        "requests": {
                            "type": "integer"
                        },
                        "bytes": {
                            "type": "integer"
                        }
                    }
                }
            },
            "networks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "network",
                        "requests",
                        "bytes"
                    ],
                    "properties": {
                        "network": {
                            "type": "string",
                            "description": "e.g. 192.0.2.0/24 or 2001:db8:1::/48"
                        },
                        "requests": {
                            "type": "integer"
                        },
                        "bytes": {
                            "type": "integer"
                        }
                    }
                }
            }
        }
    }
);

hand_schema!(
    /// `GET /v1/traffic/gtm/reasons`: the range, then the answers per decision reason.
    ReasonsAnswer,
    {
        "type": "object",
        "required": [
            "from",
            "to",
            "from_ms",
            "to_ms",
            "tz",
            "reasons"
        ],
        "properties": {
            "customer": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "host": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "from": {
                "type": "string",
                "format": "date-time",
                "description": "Start of the range covered (widened to whole buckets), RFC 3339 in `tz`"
            },
            "to": {
                "type": "string",
                "format": "date-time",
                "description": "End of the range covered (exclusive), RFC 3339 in `tz`"
            },
            "from_ms": {
                "type": "integer"
            },
            "to_ms": {
                "type": "integer"
            },
            "tz": {
                "type": "string"
            },
            "reasons": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "reason",
                        "answers"
                    ],
                    "properties": {
                        "reason": {
                            "type": "string"
                        },
                        "answers": {
                            "type": "integer"
                        }
                    }
                }
            }
        }
    }
);

hand_schema!(
    /// `GET /v1/streaming`: the range, then the streams' totals, the per-minute series and the
    /// top viewers.
    StreamingAnswer,
    {
        "type": "object",
        "required": [
            "from",
            "to",
            "from_ms",
            "to_ms",
            "tz",
            "streams",
            "series",
            "clients"
        ],
        "properties": {
            "customer": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "host": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "from": {
                "type": "string",
                "format": "date-time",
                "description": "Start of the range covered (widened to whole buckets), RFC 3339 in `tz`"
            },
            "to": {
                "type": "string",
                "format": "date-time",
                "description": "End of the range covered (exclusive), RFC 3339 in `tz`"
            },
            "from_ms": {
                "type": "integer"
            },
            "to_ms": {
                "type": "integer"
            },
            "tz": {
                "type": "string"
            },
            "streams": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "customer",
                        "host",
                        "stream",
                        "viewers",
                        "requests",
                        "segments",
                        "playlists",
                        "bytes"
                    ],
                    "additionalProperties": true,
                    "properties": {
                        "customer": {
                            "type": "string"
                        },
                        "host": {
                            "type": "string"
                        },
                        "stream": {
                            "type": "string",
                            "description": "the playlist's directory, e.g. /live/a/"
                        },
                        "viewers": {
                            "type": "integer"
                        },
                        "requests": {
                            "type": "integer"
                        },
                        "segments": {
                            "type": "integer"
                        },
                        "playlists": {
                            "type": "integer"
                        },
                        "bytes": {
                            "type": "integer"
                        },
                        "segment_fills": {
                            "type": [
                                "integer",
                                "null"
                            ]
                        },
                        "fill_bytes": {
                            "type": [
                                "integer",
                                "null"
                            ]
                        },
                        "fill_us": {
                            "type": [
                                "integer",
                                "null"
                            ]
                        },
                        "fill_us_max": {
                            "type": [
                                "integer",
                                "null"
                            ]
                        }
                    }
                }
            },
            "series": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": true
                }
            },
            "clients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": true
                }
            }
        }
    }
);

hand_schema!(
    /// `GET /v1/ops`: the range, then the points per bucket, role, instance and metric and the
    /// probes' results per method.
    OpsAnswer,
    {
        "type": "object",
        "required": [
            "from",
            "to",
            "from_ms",
            "to_ms",
            "tz",
            "granularity",
            "truncated",
            "points",
            "probe_methods"
        ],
        "properties": {
            "role": {
                "type": [
                    "string",
                    "null"
                ]
            },
            "from": {
                "type": "string",
                "format": "date-time"
            },
            "to": {
                "type": "string",
                "format": "date-time"
            },
            "from_ms": {
                "type": "integer"
            },
            "to_ms": {
                "type": "integer"
            },
            "tz": {
                "type": "string"
            },
            "granularity": {
                "type": "string",
                "enum": [
                    "minute",
                    "hour",
                    "day"
                ]
            },
            "truncated": {
                "type": "boolean",
                "description": "more than 100,000 rows: the series was cut"
            },
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "minute",
                        "role",
                        "instance",
                        "metric",
                        "kind",
                        "sum",
                        "max",
                        "samples"
                    ],
                    "properties": {
                        "minute": {
                            "type": "integer",
                            "description": "bucket start, ms since the epoch"
                        },
                        "role": {
                            "type": "string",
                            "enum": [
                                "dns",
                                "edge",
                                "probe"
                            ]
                        },
                        "instance": {
                            "type": "string",
                            "description": "the instance that wrote the log file (its certificate name)"
                        },
                        "metric": {
                            "type": "string",
                            "description": "series with its labels, e.g. udn_dns_queries_total{path=\"relayed\"}"
                        },
                        "kind": {
                            "type": "string",
                            "enum": [
                                "counter",
                                "gauge"
                            ]
                        },
                        "sum": {
                            "type": "integer",
                            "description": "a counter's count in the bucket; a gauge's sum of levels"
                        },
                        "max": {
                            "type": "integer",
                            "description": "a gauge's peak"
                        },
                        "samples": {
                            "type": "integer",
                            "description": "records in the bucket (a gauge mean is sum / samples)"
                        }
                    }
                }
            },
            "probe_methods": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "minute",
                        "pop",
                        "kind",
                        "method",
                        "samples",
                        "ok",
                        "mean"
                    ],
                    "properties": {
                        "minute": {
                            "type": "integer"
                        },
                        "pop": {
                            "type": "string"
                        },
                        "kind": {
                            "type": "string"
                        },
                        "method": {
                            "type": "string"
                        },
                        "samples": {
                            "type": "integer"
                        },
                        "ok": {
                            "type": "integer"
                        },
                        "mean": {
                            "type": "number",
                            "description": "ms, or percent for load"
                        }
                    }
                }
            }
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_schemas_read_back_unchanged() {
        for (name, v) in [
            ("JsonObject", JsonObject::json()),
            ("TopAnswer", TopAnswer::json()),
            ("ReasonsAnswer", ReasonsAnswer::json()),
            ("StreamingAnswer", StreamingAnswer::json()),
            ("OpsAnswer", OpsAnswer::json()),
        ] {
            let schema: RefOr<Schema> = serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("{name} does not read: {e}"));
            assert_eq!(serde_json::to_value(&schema).unwrap(), v, "{name}");
        }
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().unwrap().len() > 50);
    }
}
