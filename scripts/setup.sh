#!/usr/bin/env bash
# Installs Strata's system dependencies on Debian/Ubuntu (OpenBLAS, COIN-OR CBC, oneDNN, Open MPI, pkg-config,
# iproute2 for the two-host pipeline test) when missing.
set -euo pipefail
need=()
# Installed means "install ok installed": `dpkg -s` also succeeds for a removed package whose
# configuration files remain, which would then never be installed again.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
installed libopenblas-dev || need+=(libopenblas-dev)
installed pkg-config || need+=(pkg-config)
installed coinor-libcbc-dev || need+=(coinor-libcbc-dev)
installed libdnnl-dev || need+=(libdnnl-dev)
installed libopenmpi-dev || need+=(libopenmpi-dev)
installed openmpi-bin || need+=(openmpi-bin)
installed iproute2 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
