//! Replays the saved corpus (corpus/<target>/*: inputs cargo-fuzz found that
//! reach new code, and the crashes it found once fixed) through every target, on
//! stable: what fuzzing found stays found.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 14] = [
    ("config", attestd_fuzz::config),
    ("initdata", attestd_fuzz::initdata),
    ("keyprovider", attestd_fuzz::keyprovider),
    ("kbs_answers", attestd_fuzz::kbs_answers),
    ("eventlog", attestd_fuzz::eventlog),
    ("plugin_info", attestd_fuzz::plugin_info),
    ("snp_device", attestd_fuzz::snp_device),
    ("tdx_quote", attestd_fuzz::tdx_quote),
    ("hcl_report", attestd_fuzz::hcl_report),
    ("podvm_user_data", attestd_fuzz::podvm_user_data),
    ("webhook_review", attestd_fuzz::webhook_review),
    ("probe", attestd_fuzz::probe),
    ("ttrpc_frames", attestd_fuzz::ttrpc_frames),
    ("cidata_iso", attestd_fuzz::cidata_iso),
];

#[test]
fn every_saved_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("no corpus for target {name} in {}", dir.display());
        };
        let mut n = 0;
        for e in entries {
            let path = e.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "the corpus of {name} is empty");
        replayed += n;
    }
    println!("replayed {replayed} inputs");
}
