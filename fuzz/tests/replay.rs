//! Replays the committed seed corpus (`corpus/<target>/seed-*`) through every target's checks, without libFuzzer:
//! what compose/test runs when no nightly toolchain is at hand, and a quick check that the seeds still exercise
//! the code after a change of an input format.

use std::path::Path;

#[test]
fn every_seed_of_every_target_passes_its_checks() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, run) in tollgate_fuzz::TARGETS {
        let dir = corpus.join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{target} has no seed in {}", dir.display());
        for seed in seeds {
            eprintln!("{target}: {}", seed.display());
            run(&std::fs::read(&seed).unwrap());
        }
    }
}
