#!/bin/sh
# The main job: install what Tern needs, build it, and show what it decides about processors.
# Uses this machine's real CPU and the nine recorded processors in the repository's fixtures.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build --product tern 2>&1 | tail -n 1
tern=.build/debug/tern
dumps=Tests/TernCPUTests/Fixtures/cpuid-dumps

echo
echo "== This host, as libvirt capabilities describe it (tern capabilities) =="
$tern capabilities

echo "== The recorded processors, as Tern names them (tern capabilities --host DUMP) =="
for dump in "$dumps"/*.xml; do
    model=$($tern capabilities --host "$dump" --json | sed -n 's/^ *"model" : "\(.*\)",$/\1/p')
    printf '  %-28s %s\n' "$(basename "$dump" .xml)" "$model"
done

echo
echo "== A VM started on a Xeon Gold 6148 (Skylake-SP): where can it move? =="
src=$dumps/Xeon-Gold-6148.xml
intel="$dumps/Xeon-Gold-6148.xml $dumps/Xeon-Platinum-8268.xml $dumps/Ice-Lake-Server.xml $dumps/Core-i7-2600.xml $dumps/EPYC-7502-32-Core.xml"
echo "-- host passthrough (no compatibility mode):"
# shellcheck disable=SC2086
$tern migrate-check --host "$src" $intel
echo "-- classic processor compatibility mode:"
# shellcheck disable=SC2086
$tern migrate-check --host "$src" --compat $intel
echo "-- pool mode over the four Intel hosts (Sandy Bridge, Skylake-SP, Cascade Lake, Ice Lake):"
# shellcheck disable=SC2086
$tern migrate-check --host "$src" --pool "$dumps/Xeon-Gold-6148.xml" --pool "$dumps/Xeon-Platinum-8268.xml" \
    --pool "$dumps/Ice-Lake-Server.xml" --pool "$dumps/Core-i7-2600.xml" $intel

echo
echo "== The guest CPUID Tern gives that VM in compatibility mode (first leaves) =="
$tern cpuid --host "$src" --compat | head -n 8
