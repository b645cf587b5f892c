# Sourced by containers/build.sh and scripts/install.sh: read a third party's
# plugin crate as both ship it. `plugin_metadata DIR` sets plugin_name,
# plugin_version, plugin_tee, plugin_transport, plugin_probe and plugin_devices
# (JSON arrays of strings, which are TOML arrays too) and plugin_target_dir from
# DIR/Cargo.toml's [package.metadata.attestd]; it checks the TEE name and the
# transport as attestd does (runtime/src/config/mod.rs), so a bad one fails here.
# The metadata is read with cargo and jq, never executed.
plugin_metadata() {
    local dir=$1 meta
    command -v jq >/dev/null || { echo "error: reading $dir's metadata needs jq" >&2; return 1; }
    meta=$(cargo metadata --manifest-path "$dir/Cargo.toml" --no-deps --format-version 1 --locked) || return 1
    plugin_name=$(jq -r '.packages[0].name' <<<"$meta")
    plugin_version=$(jq -r '.packages[0].version' <<<"$meta")
    plugin_tee=$(jq -r '.packages[0].metadata.attestd.tee // empty' <<<"$meta")
    plugin_transport=$(jq -r '.packages[0].metadata.attestd.transport // "ttrpc"' <<<"$meta")
    plugin_probe=$(jq -c '.packages[0].metadata.attestd.probe // []' <<<"$meta")
    plugin_devices=$(jq -c '.packages[0].metadata.attestd.devices // []' <<<"$meta")
    plugin_target_dir=$(jq -r '.target_directory' <<<"$meta")
    if ! [[ $plugin_tee =~ ^x-[a-z0-9]+(-[a-z0-9]+)*$ ]] || [ ${#plugin_tee} -gt 32 ]; then
        echo "error: $dir: [package.metadata.attestd] tee \"$plugin_tee\" is not a third party's TEE name (\"x-\", then lowercase letters, digits and single '-', at most 32 bytes)" >&2
        return 1
    fi
    case $plugin_transport in
        ttrpc|grpc) ;;
        *) echo "error: $dir: transport must be ttrpc or grpc, not $plugin_transport" >&2; return 1 ;;
    esac
}
