//! Seed corpora, written by the fuzz targets themselves (so that they are built exactly as the
//! targets are): `MEET_FUZZ_WRITE_SEEDS=DIR` makes a target write its seeds to `DIR/<target>/`
//! at start-up and exit. `fuzz/seeds.sh` does it for every target.

use std::path::Path;

/// Writes the seeds of `target` and exits, when `MEET_FUZZ_WRITE_SEEDS` is set.
pub fn write_if_asked(target: &str) {
    let Some(dir) = std::env::var_os("MEET_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir).join(target);
    std::fs::create_dir_all(&dir).expect("the seed directory");
    let seeds = crate::seeds_for(target);
    for (name, data) in &seeds {
        std::fs::write(dir.join(name), data).expect("a seed file");
    }
    eprintln!("{target}: wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}
