#!/usr/bin/env bash
# The Confidential Containers guest around attestd, for `build.sh --coco`: what
# cloud-api-adaptor's pod VM images hold (src/cloud-api-adaptor/podvm/files at
# the pinned commit), with attestd in the attestation-agent's place.
#
#   containers/podvm/coco.sh ROOT KATA_AGENT_DIR CAA_DIR GUEST_COMPONENTS_DIR KATA_DIR
#
# The directories are the peers cache's (scripts/peers-build.sh). Same paths,
# unit names and orderings as upstream's images, so a peer-pod maintainer finds
# what they know:
#
#   attestd serves the AA socket ──▶ confidential-data-hub (cdh.sock)
#        ──▶ kata-agent (agent.sock) ──▶ agent-protocol-forwarder (:15150)
#   cdh.sock ──▶ api-server-rest (in the pod's network namespace, :8006)
#
# Each start is triggered by the socket of the one before (a .path unit), as
# upstream's are; attestd's own units (and confidential-data-hub.path) are
# rendered by `attestd units --at-boot` in build.sh.
set -euo pipefail
[ $# = 5 ] || { echo "usage: $0 ROOT KATA_AGENT_DIR CAA_DIR GUEST_COMPONENTS_DIR KATA_DIR" >&2; exit 2; }
ROOT=$1 AGENT=$2 CAA=$3 GC=$4 KATA=$5
cd "$(dirname "$0")/../.."

install -d "$ROOT/usr/local/bin"
install -m 0755 "$AGENT/kata-agent" "$ROOT/usr/local/bin/kata-agent"
install -m 0755 "$CAA/agent-protocol-forwarder" "$ROOT/usr/local/bin/agent-protocol-forwarder"
# The ttrpc build of CDH, under the name upstream's images give it.
install -m 0755 "$GC/ttrpc-cdh" "$ROOT/usr/local/bin/confidential-data-hub"
install -m 0755 "$GC/api-server-rest" "$ROOT/usr/local/bin/api-server-rest"

# kata-agent: on the socket APF forwards to; the guest components are systemd's
# to start, not the agent's.
cat >"$ROOT/etc/agent-config.toml" <<'EOF'
server_addr = "unix:///run/kata-containers/agent.sock"
guest_components_procs = "none"
EOF
# The agent policy: init-data's policy.rego, which attestd-podvm writes to
# /run/peerpod (measured, bound by attestd); without one, allow-all, copied
# there at boot by systemd-tmpfiles (attestd-podvm's generator orders
# provisioning after it, so init-data's file wins).
install -d "$ROOT/etc/kata-opa" "$ROOT/etc/tmpfiles.d"
install -m 0644 "$KATA/allow-all.rego" "$ROOT/etc/kata-opa/allow-all.rego"
ln -sf /run/peerpod/policy.rego "$ROOT/etc/kata-opa/default-policy.rego"
cat >"$ROOT/etc/tmpfiles.d/policy.conf" <<'EOF'
#Type   Path                            Mode User Group Age     Argument
C       /run/peerpod/policy.rego        -    -    -     -       /etc/kata-opa/allow-all.rego
EOF
# Registry credentials: the pod's, when cloud-api-adaptor puts them in the
# user-data (/run/peerpod/auth.json); else an empty set, copied there at boot
# as for the policy (CDH's unit names the file, and image-rs refuses a pull
# whose credentials file is missing).
install -d "$ROOT/etc/kata-oci"
echo '{"auths":{}}' >"$ROOT/etc/kata-oci/empty-auth.json"
cat >"$ROOT/etc/tmpfiles.d/auth.conf" <<'EOF'
#Type   Path                            Mode User Group Age     Argument
C       /run/peerpod/auth.json          -    -    -     -       /etc/kata-oci/empty-auth.json
EOF
# Image decryption: image-rs (in CDH) asks the key provider "attestation-agent",
# which is CDH itself; CDH gets the key from the KBS with attestd's evidence.
cat >"$ROOT/etc/ocicrypt_config.json" <<'EOF'
{
    "key-providers": {
        "attestation-agent": {
            "ttrpc": "unix:///run/confidential-containers/cdh.sock"
        }
    }
}
EOF

# The pause bundle kata-agent starts a pod's sandbox from (no pull): the same
# static program the Kubernetes tests' pause image holds.
install -d "$ROOT/pause_bundle/rootfs"
gcc -static -O2 -s -o "$ROOT/pause_bundle/rootfs/pause" containers/pause.c
cat >"$ROOT/pause_bundle/config.json" <<'EOF'
{
    "ociVersion": "1.0.2",
    "process": {
        "user": {"uid": 65535, "gid": 65535},
        "args": ["/pause"],
        "cwd": "/"
    },
    "root": {"path": "rootfs", "readonly": true}
}
EOF

U=$ROOT/etc/systemd/system
cat >"$U/netns@.service" <<'EOF'
[Unit]
Description=Network namespace %I

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=ip netns add %I
ExecStart=ip netns exec %I ip link set lo up
ExecStop=ip netns del %I
EOF
# CDH once attestd serves (confidential-data-hub.path, rendered by attestd). Its
# config from init-data when one came (attestd-podvm writes cdh.toml only then).
cat >"$U/confidential-data-hub.service" <<'EOF'
[Unit]
Description=Confidential Data Hub TTRPC API Server
After=network.target attestd-provision.service attestd.service

[Service]
Type=simple
Environment=OCICRYPT_KEYPROVIDER_CONFIG=/etc/ocicrypt_config.json
Environment="CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS=file:///run/peerpod/auth.json"
ExecStart=/bin/sh -c 'if [ -f /run/peerpod/cdh.toml ]; then exec /usr/local/bin/confidential-data-hub -c /run/peerpod/cdh.toml; else exec /usr/local/bin/confidential-data-hub; fi'
RestartSec=1
Restart=always

[Install]
WantedBy=multi-user.target
EOF
cat >"$U/kata-agent.path" <<'EOF'
[Unit]
Description=Start kata-agent once the Confidential Data Hub serves

[Path]
PathExists=/run/confidential-containers/cdh.sock
Unit=kata-agent.service

[Install]
WantedBy=multi-user.target
EOF
cat >"$U/kata-agent.service" <<'EOF'
[Unit]
Description=Kata Agent
BindsTo=netns@podns.service
After=netns@podns.service

[Service]
ExecStartPre=mkdir -p /run/kata-containers
ExecStartPre=-umount /sys/fs/cgroup/misc
ExecStart=/usr/local/bin/kata-agent --config /etc/agent-config.toml
SyslogIdentifier=kata-agent
EOF
cat >"$U/agent-protocol-forwarder.path" <<'EOF'
[Unit]
Description=Start the agent protocol forwarder once kata-agent serves

[Path]
PathExists=/run/kata-containers/agent.sock
Unit=agent-protocol-forwarder.service

[Install]
WantedBy=multi-user.target
EOF
# TLS from the apf.json cloud-api-adaptor writes in the user-data (its server
# key and certificate, the adaptor's CA); /etc/default/agent-protocol-forwarder
# is on the verified root, so only the image may turn TLS off.
cat >"$U/agent-protocol-forwarder.service" <<'EOF'
[Unit]
Description=Agent Protocol Forwarder
DefaultDependencies=no
After=attestd-provision.service

[Service]
Type=notify
EnvironmentFile=-/etc/default/agent-protocol-forwarder
ExecStart=/usr/local/bin/agent-protocol-forwarder -pod-namespace /run/netns/podns -kata-agent-socket /run/kata-containers/agent.sock $TLS_OPTIONS $OPTIONS
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
EOF
cat >"$U/api-server-rest.path" <<'EOF'
[Unit]
Description=Start api-server-rest once the Confidential Data Hub serves

[Path]
PathExists=/run/confidential-containers/cdh.sock
Unit=api-server-rest.service

[Install]
WantedBy=multi-user.target
EOF
cat >"$U/api-server-rest.service" <<'EOF'
[Unit]
Description=CDH API Server Rest Service
BindsTo=netns@podns.service
After=network.target kata-agent.service netns@podns.service

[Service]
Type=simple
NetworkNamespacePath=/run/netns/podns
ExecStart=/usr/local/bin/api-server-rest --features all
RestartSec=1
Restart=always

[Install]
WantedBy=multi-user.target
EOF
