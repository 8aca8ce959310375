#!/usr/bin/env bash
# The GPU check, in two halves.
#
#   scripts/gpu-check.sh prepare   here (registries reachable, no GPU needed): builds xtask with
#                                  the cuda and vulkan backends (offline LLVM: `cargo xtask setup
#                                  cuda`), strips and compresses it to gpu/xtask.xz (~31 MiB), and
#                                  downloads the Vulkan loader debs into .gl/. Both folders are
#                                  git-ignored; the device tool carries them (carry: gpu, .gl).
#   scripts/gpu-check.sh run       on the lent machine (no Rust, no registry): device info, then
#                                  `xtask gpu-check` on cuda and on vulkan, then PyTorch + PEFT LoRA
#                                  r=8 at f32 and bf16 on the same model shape, all into $OUT
#                                  (or runs/gpu-check): JSON, Markdown and logs. About 5 minutes.
#
# The CPU dry run of the same steps is `cargo xtask gpu-check --tiny --device cpu` (tested in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

if [ "$mode" = prepare ]; then
    cargo xtask setup cuda
    CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000} cargo build --release -p xtask --features cuda,vulkan
    mkdir -p gpu
    strip -o gpu/xtask target/release/xtask
    xz -T0 -6 -f gpu/xtask
    ls -la gpu/
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1) || echo "no Vulkan loader debs: the vulkan row will be skipped"
    exit 0
fi

out=${OUT:-runs/gpu-check}
mkdir -p "$out"
# At most 8 files come back from a lent machine: summary.txt, run.log, and per backend one .json
# and one .md.
if [ ! -x gpu/xtask ]; then
    xz -dkf gpu/xtask.xz
    chmod +x gpu/xtask
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/summary.txt" || true
# Peak GPU memory of each idlora run, sampled (burn has no allocator statistics to ask).
sample() { while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done; }

for dev in cuda vulkan; do
    if [ "$dev" = vulkan ]; then
        for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
        ldconfig || true
        export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
    fi
    sample > "/tmp/mem-$dev.log" 2>/dev/null &
    pid=$!
    echo "=== $dev" >> "$out/run.log"
    if timeout 240 gpu/xtask gpu-check --device "$dev" --steps 3 --out "/tmp/gpu-check-$dev" >> "$out/run.log" 2>&1; then
        cp "/tmp/gpu-check-$dev/gpu-check.json" "$out/$dev.json"
        cp "/tmp/gpu-check-$dev/gpu-check.md" "$out/$dev.md"
        echo "$dev: done"
    else
        echo "$dev: failed (see run.log)" | tee -a "$out/summary.txt"
    fi
    kill "$pid" 2>/dev/null || true
    echo "$dev: peak GPU memory used $(sort -n "/tmp/mem-$dev.log" | tail -1) MiB (nvidia-smi, whole device)" | tee -a "$out/summary.txt"
done

for dtype in f32 bf16; do
    echo "torch + peft, LoRA r=8, $dtype, batch 8 x 512:" >> "$out/summary.txt"
    PYTHONUNBUFFERED=1 timeout 120 python3 benches/python/gpu_train_speed.py "$dtype" 8 8 512 3 \
        >> "$out/summary.txt" 2>> "$out/run.log" || echo "torch $dtype: failed" >> "$out/summary.txt"
done
cat "$out"/*.md "$out/summary.txt" 2>/dev/null || true
