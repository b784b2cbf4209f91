#!/bin/sh
# Entrypoint of a lab node: sshd for Fabric, then dockerd with TLS only (as docker-machine sets up).
set -eu
# The tool mounts its generated host key and the client's public key; sshd accepts nothing else.
install -m 600 /etc/cdtasks/ssh/host_key /etc/ssh/ssh_host_ed25519_key
install -d -m 700 /root/.ssh
install -m 600 /etc/cdtasks/ssh/authorized_keys /root/.ssh/authorized_keys
mkdir -p /run/sshd
/usr/sbin/sshd -o HostKey=/etc/ssh/ssh_host_ed25519_key -o PasswordAuthentication=no \
  -o PermitRootLogin=prohibit-password
exec dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2376 \
  --tlsverify --tlscacert=/etc/cdtasks/tls/ca.pem \
  --tlscert=/etc/cdtasks/tls/server-cert.pem --tlskey=/etc/cdtasks/tls/server-key.pem "$@"
