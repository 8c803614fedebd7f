# Shared by run.sh and seeds.sh: how the targets are built. This is exactly what
# `cargo fuzz build --sanitizer none --debug-assertions --codegen-units 16` does (cargo-fuzz
# 0.13), done with plain cargo so that running the targets needs nothing beyond the Rust
# toolchain and a C++ compiler (cargo-fuzz itself is only needed for its other commands, and
# shares this build):
# - libFuzzer's coverage instrumentation (SanitizerCoverage), stable `-C` flags;
# - no sanitizer: the project's crates forbid unsafe code, and AddressSanitizer would need a
#   nightly compiler;
# - debug assertions and overflow checks on, so an arithmetic overflow on hostile input is a
#   crash;
# - `--target` given, so that the flags skip build scripts and proc macros;
# - the release profile of fuzz/Cargo.toml (opt-level 1, 16 codegen units): short to build
#   on 2 cores, 2.5 to 6 times faster to run than opt-level 0.
# FUZZ_TARGET_DIR: where to build (default fuzz/target); a directory that outlives the clone
# makes later builds incremental.
FUZZ_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-target}"
FUZZ_BIN="$FUZZ_TARGET_DIR/$FUZZ_TRIPLE/release"
FUZZ_RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
FUZZ_RUSTFLAGS+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
FUZZ_RUSTFLAGS+=" -Cllvm-args=-sanitizer-coverage-pc-table"
FUZZ_RUSTFLAGS+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
FUZZ_RUSTFLAGS+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
FUZZ_RUSTFLAGS+=" -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions"
FUZZ_RUSTFLAGS+=" -Ccodegen-units=16"

fuzz_build() {
  RUSTFLAGS="$FUZZ_RUSTFLAGS" cargo build --manifest-path Cargo.toml --release --bins \
    --target "$FUZZ_TRIPLE" --target-dir "$FUZZ_TARGET_DIR" \
    --config 'profile.release.debug="line-tables-only"'
}
