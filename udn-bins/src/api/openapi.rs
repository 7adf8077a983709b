//! The OpenAPI 3.1 document of the control-plane API, generated from the Rust code: each
//! handler's `#[utoipa::path]` attribute (summary, tag, parameters, responses) and the
//! request and answer types (`#[derive(utoipa::ToSchema)]`, `#[derive(utoipa::IntoParams)]`,
//! the configuration types of `udn_core` and the store's types with their `openapi`
//! feature). The routers collect it themselves (`utoipa_axum`'s `OpenApiRouter` and
//! `routes!` in `routes.rs`), so a route cannot be served without being described.
//!
//! Served at `GET /v1/openapi.json` ([`json`]); `udn openapi` prints it, and
//! `docs/openapi.json` is that output, checked by a test.

use std::collections::BTreeMap;
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

/// The document: the title, authentication and error answer, with every route of the
/// HTTPS listener.
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

/// The error answers of a route that needs a caller: 401 (no or a bad credential),
/// 403 (not the caller's object, or a scope it lacks), 404, 422 (the fields at fault).
pub(crate) struct Errors;

/// [`Errors`] less 422, for a route that reads no body.
pub(crate) struct AuthErrors;

/// The error answers of a route anyone may call: 404 and 422.
pub(crate) struct PublicErrors;

fn errors(codes: &[&str]) -> BTreeMap<String, RefOr<Response>> {
    let error = || RefOr::Ref(Ref::from_response_name(ErrorResponse::response().0));
    codes.iter().map(|c| (c.to_string(), error())).collect()
}

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&["401", "403", "404", "422"])
    }
}

impl utoipa::IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&["401", "403", "404"])
    }
}

impl utoipa::IntoResponses for PublicErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&["404", "422"])
    }
}

/// The schemas written by hand, by name (`openapi_hand.json`, OpenAPI 3.1 form): the
/// answers a handler builds as JSON on the spot (`serde_json::json!` in `routes.rs`),
/// with no Rust type to derive a schema from. A test checks that each reads back
/// unchanged.
static HAND: LazyLock<serde_json::Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("openapi_hand.json")).unwrap_or_default());

/// A schema of [`HAND`]; one that does not read (a test catches it) is left empty,
/// which accepts anything.
fn hand(name: &str) -> RefOr<Schema> {
    serde_json::from_value(HAND[name].clone()).unwrap_or_default()
}

macro_rules! hand_schema {
    ($($(#[$attr:meta])* $name:ident,)*) => {
        $(
            $(#[$attr])*
            pub(crate) struct $name;

            impl utoipa::PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    hand(stringify!($name))
                }
            }

            impl utoipa::ToSchema for $name {}
        )*

        /// The names of the hand-written schemas.
        #[cfg(test)]
        const HAND_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

hand_schema!(
    /// A free-form JSON object: the answers of the billing and sign-up routes, which pass
    /// on what the billing store reports.
    JsonObject,
    /// `GET /v1/traffic/cdn/top`: the range, then the 20 URLs and the 20 client networks
    /// with the most responses.
    TopAnswer,
    /// `GET /v1/traffic/gtm/reasons`: the range, then the answers per decision reason.
    ReasonsAnswer,
    /// `GET /v1/streaming`: the range, then the streams' totals, the per-minute series and
    /// the top viewers.
    StreamingAnswer,
    /// `GET /v1/ops`: the range, then the points per bucket, role, instance and metric and
    /// the probes' results per method.
    OpsAnswer,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_schemas_read_back_unchanged() {
        let file = HAND.as_object().expect("openapi_hand.json is an object");
        let mut names: Vec<&str> = file.keys().map(String::as_str).collect();
        let mut declared = HAND_NAMES.to_vec();
        names.sort_unstable();
        declared.sort_unstable();
        assert_eq!(
            names, declared,
            "openapi_hand.json and hand_schema! disagree"
        );
        for (name, v) in file {
            let schema: RefOr<Schema> = serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("{name} does not read: {e}"));
            assert_eq!(&serde_json::to_value(&schema).unwrap(), v, "{name}");
        }
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().unwrap().len() > 50);
    }
}
