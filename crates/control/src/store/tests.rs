use super::*;

const BOOKINFO: &str =
    "../../../shared/fixtures/istio/samples/bookinfo/platform/kube/bookinfo.yaml";
const RULES: &str =
    "../../../shared/fixtures/istio/samples/bookinfo/networking/destination-rule-all.yaml";

fn fixture(rel: &str) -> Vec<Document> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    config::parse_path(&path).unwrap()
}

fn lines(outcomes: &[ApplyOutcome]) -> Vec<String> {
    outcomes.iter().map(ToString::to_string).collect()
}

const REVIEWS_DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
";

#[test]
fn apply_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.revision(), 0);
    let (outcomes, rev) = store.apply(fixture(BOOKINFO)).unwrap();
    assert_eq!(rev, 1);
    assert_eq!(outcomes.len(), 14);
    let (outcomes, rev) = store.apply(fixture(RULES)).unwrap();
    assert_eq!(rev, 2);
    assert_eq!(
        lines(&outcomes)[1],
        "destinationrule.networking.istio.io/reviews created"
    );
    let before = store.resources().clone();
    drop(store);

    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.revision(), 2);
    assert_eq!(store.resources().len(), before.len());
    for (a, b) in store.resources().iter().zip(before.iter()) {
        assert_eq!(a.resource, b.resource);
    }
    // Reloaded objects compare equal to the manifests: re-applying changes nothing.
    let (outcomes, rev) = store.apply(fixture(RULES)).unwrap();
    assert_eq!(rev, 2);
    assert!(outcomes
        .iter()
        .all(|o| o.action == config::Action::Unchanged));
    let (outcomes, rev) = store.apply(fixture(BOOKINFO)).unwrap();
    assert_eq!(rev, 2);
    assert!(outcomes
        .iter()
        .all(|o| o.action == config::Action::Unchanged));
}

#[test]
fn failed_apply_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.apply(fixture(BOOKINFO)).unwrap();
    let on_disk = fs::read(dir.path().join(STATE_FILE)).unwrap();
    // A route to a subset that does not exist is a cross-resource error.
    let bad = config::parse_str(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v9
",
        "bad.yaml",
    )
    .unwrap();
    let err = store.apply(bad).unwrap_err();
    assert!(matches!(err, ApplyError::Invalid(_)), "{err}");
    assert_eq!(store.revision(), 1);
    assert!(store
        .get(Kind::VirtualService, "default", "reviews")
        .is_none());
    assert_eq!(fs::read(dir.path().join(STATE_FILE)).unwrap(), on_disk);
}

#[test]
fn configured_and_deleted_bump_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let docs = config::parse_str(REVIEWS_DR, "dr.yaml").unwrap();
    let (o, rev) = store.apply(docs.clone()).unwrap();
    assert_eq!(
        (lines(&o), rev),
        (
            vec!["destinationrule.networking.istio.io/reviews created".to_string()],
            1
        )
    );
    let changed =
        config::parse_str(&REVIEWS_DR.replace("version: v1", "version: v2"), "dr.yaml").unwrap();
    let (o, rev) = store.apply(changed).unwrap();
    assert_eq!(
        (lines(&o), rev),
        (
            vec!["destinationrule.networking.istio.io/reviews configured".to_string()],
            2
        )
    );
    let (o, rev) = store.delete(&docs).unwrap();
    assert_eq!(
        o[0].to_string(),
        "destinationrule.networking.istio.io \"reviews\" deleted"
    );
    assert_eq!(rev, 3);
    let (o, rev) = store.delete(&docs).unwrap();
    assert_eq!(
        o[0].to_string(),
        "destinationrule.networking.istio.io \"reviews\" not found"
    );
    assert_eq!(rev, 3);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!((store.revision(), store.resources().len()), (3, 0));
}

#[test]
fn leftover_temp_file_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store
        .apply(config::parse_str(REVIEWS_DR, "dr.yaml").unwrap())
        .unwrap();
    drop(store);
    // A crash between writing the temporary file and the rename leaves this behind.
    fs::write(dir.path().join(TEMP_FILE), b"{\"revision\": 99, \"obj").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.revision(), 1);
    assert!(store
        .get(Kind::DestinationRule, "default", "reviews")
        .is_some());
    assert!(!dir.path().join(TEMP_FILE).exists());
}

#[test]
fn corrupt_state_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join(STATE_FILE),
        b"{\"revision\": 3, \"objects\": [",
    )
    .unwrap();
    let err = Store::open(dir.path()).unwrap_err().to_string();
    let path = dir.path().join(STATE_FILE).display().to_string();
    assert!(
        err.starts_with(&format!(
            "{path}: the stored state is corrupt: not a snapshot: "
        )),
        "{err}"
    );
    assert!(
        err.ends_with(
            "; fix: restore the file from a backup, or move it away to start with an empty store"
        ),
        "{err}"
    );

    fs::write(
        dir.path().join(STATE_FILE),
        br#"{"revision": 3, "objects": [{"apiVersion": "v1", "kind": "Nope", "metadata": {"name": "x"}}]}"#,
    )
    .unwrap();
    let err = Store::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{path}: the stored state is corrupt: object 0 does not parse: {path} (object 0):1:"
        )),
        "{err}"
    );
}

#[test]
fn second_store_on_one_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}
