# shellcheck shell=bash
# The profile every shipped binary is built with is defined once: the root
# Cargo.toml's [profile.release] (chosen by measurement, docs/benchmarks.md,
# "Release profile"). Each hardware attester is its own workspace with its own
# Cargo.toml; sourcing this exports that table as CARGO_PROFILE_RELEASE_*, so
# their release builds are the same.
#
#   . scripts/shipped-profile.sh     # from the repository's root
_shipped_profile() {
    local key value
    while IFS='=' read -r key value; do
        key=$(echo "$key" | tr -d ' ' | tr 'a-z-' 'A-Z_')
        value=$(echo "$value" | sed -e 's/#.*//' -e 's/^ *"\{0,1\}//' -e 's/"\{0,1\} *$//')
        [ -n "$key" ] && export "CARGO_PROFILE_RELEASE_$key=$value"
    done < <(awk '/^\[/ { on = ($0 == "[profile.release]"); next } on && /^[a-z-]+ *=/' Cargo.toml)
}
_shipped_profile
unset -f _shipped_profile
