set -x
cd /work/main
D=docs/bench/chunkcap/live
date -u
.venv/bin/sliceserve profile --threads 2 --no-cache --out $D/device_profile.json > $D/profile.log 2>&1
date -u
for s in 0 1 2; do
  .venv/bin/sliceserve run -w edge -p slice --load 0.25 -n 200 -s $s -l $D/device_profile.json --out $D/default_s$s.json > $D/default_s$s.log 2>&1
  date -u
  .venv/bin/sliceserve run -w edge -p slice --load 0.25 -n 200 -s $s -l $D/device_profile.json --policy-option ttft_chunk_share=null --out $D/off_s$s.json > $D/off_s$s.log 2>&1
  date -u
done
echo ALLDONE
