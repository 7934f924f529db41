//! Replays the checked-in fuzz corpus (`fuzz/corpus/{target}/*`) through the same property
//! checks the `cargo fuzz` targets run (`gateway::fuzzing`), so a regression of any input the
//! fuzzers found interesting fails a plain `cargo test` on stable. See `cargo xtask fuzz`.

use std::{fs, path::Path};

#[test]
fn every_corpus_input_satisfies_its_properties() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut total = 0;
    let mut failures = Vec::new();
    for (target, check) in gateway::fuzzing::TARGETS {
        let dir = corpus.join(target);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "the corpus of {target} is empty");
        for file in &files {
            let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| check(&data));
            if outcome.is_err() {
                failures.push(format!("{target}: {}", file.display()));
            }
        }
        total += files.len();
    }
    // Every corpus directory belongs to a target (a renamed target must move its corpus).
    for entry in fs::read_dir(&corpus).expect("fuzz/corpus") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(gateway::fuzzing::TARGETS.iter().any(|(t, _)| *t == name), "fuzz/corpus/{name} has no target");
    }
    assert!(total > 0);
    assert!(
        failures.is_empty(),
        "corpus inputs failing their properties (messages above; reproduce with `cargo xtask fuzz TARGET`):\n{}",
        failures.join("\n")
    );
}
