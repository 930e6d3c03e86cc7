//! Berth CNI plugins: bridge, host-local IPAM, VXLAN, host-gw (issue 4). Not started yet.
