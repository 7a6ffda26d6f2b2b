# Live A/B of ttft_without_own_row on this machine: edge, load 0.25, 200 requests, seeds 0-2,
# the variants interleaved, with the Zen 4 profile the chunk cap's live run measured (so the
# load means the same requests/s as there).
set -x
cd "$(dirname "$0")/../../../.."
D=docs/bench/ownrow/live
P=docs/bench/chunkcap/live/device_profile.json
date -u
for s in 0 1 2; do
  .venv/bin/sliceserve run -w edge -p slice --load 0.25 -n 200 -s $s -l $P --out $D/own_s$s.json > $D/own_s$s.log 2>&1
  date -u
  .venv/bin/sliceserve run -w edge -p slice --load 0.25 -n 200 -s $s -l $P --policy-option ttft_without_own_row=false --out $D/before_s$s.json > $D/before_s$s.log 2>&1
  date -u
done
echo ALLDONE
