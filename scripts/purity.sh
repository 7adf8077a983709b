#!/usr/bin/env bash
# The purity guard: the pure crates (and the default-feature builds of the others) must
# not pull in an async runtime, an HTTP stack or a socket layer. `cargo test --workspace`
# unifies features and would hide such a leak, so this checks each crate on its own.
set -euo pipefail
status=0
for crate in udn-core udn-billing udn-dns udn-cache udn-probe; do
  leak=$(cargo tree -p "$crate" -e normal --no-default-features 2>/dev/null \
    | grep -Eo '\b(tokio|hyper|reqwest|mio) v[0-9.]+' | sort -u | tr '\n' ' ' || true)
  if [ -n "$leak" ]; then
    echo "purity: $crate depends on: $leak" >&2
    status=1
  else
    echo "purity: $crate is pure"
  fi
done
exit $status
