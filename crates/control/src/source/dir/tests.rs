use std::fs;

use config::Kind;

use super::*;
use crate::api::shared;
use crate::store::Store;

const RATINGS: &str = "apiVersion: v1
kind: Service
metadata:
  name: ratings
spec:
  selector:
    app: ratings
  ports:
  - port: 9080
    name: http
";

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
";

fn setup() -> (tempfile::TempDir, tempfile::TempDir, Shared) {
    let state = tempfile::tempdir().unwrap();
    let watched = tempfile::tempdir().unwrap();
    let store = shared(Store::open(state.path()).unwrap());
    (state, watched, store)
}

fn names(store: &Shared, kind: Kind) -> Vec<String> {
    lock(store)
        .list(kind, None)
        .iter()
        .map(|d| d.resource.name().to_string())
        .collect()
}

#[test]
fn applies_files_then_deletes_what_leaves() {
    let (_state, dir, store) = setup();
    fs::write(dir.path().join("svc.yaml"), RATINGS).unwrap();
    fs::write(dir.path().join("dr.yml"), DR).unwrap();
    fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let mut source = DirSource::new(dir.path());

    let first = source.scan(&store).unwrap();
    assert_eq!(
        first.applied,
        vec![
            "destinationrule.networking.istio.io/ratings created",
            "service/ratings created"
        ]
    );
    assert_eq!(names(&store, Kind::Service), vec!["ratings"]);
    let revision = lock(&store).revision();

    // Nothing changed on disk: nothing to do, no new revision.
    assert!(source.scan(&store).unwrap().is_empty());
    assert_eq!(lock(&store).revision(), revision);

    fs::remove_file(dir.path().join("dr.yml")).unwrap();
    let second = source.scan(&store).unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.deleted.len(), 1);
    assert_eq!(second.deleted[0].name, "ratings");
    assert_eq!(second.deleted[0].kind, Kind::DestinationRule);
    assert!(names(&store, Kind::DestinationRule).is_empty());
    assert_eq!(names(&store, Kind::Service), vec!["ratings"]);
}

#[test]
fn a_bad_file_changes_nothing_and_names_the_file() {
    let (_state, dir, store) = setup();
    fs::write(dir.path().join("svc.yaml"), RATINGS).unwrap();
    let mut source = DirSource::new(dir.path());
    source.scan(&store).unwrap();
    let revision = lock(&store).revision();

    // A second object plus a broken file: the whole scan is refused.
    fs::write(dir.path().join("dr.yaml"), DR).unwrap();
    let bad = dir.path().join("broken.yaml");
    fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  spec: [\n",
    )
    .unwrap();
    let err = source.scan(&store).unwrap_err().to_string();
    assert!(err.contains("broken.yaml"), "{err}");
    assert!(err.contains("last good"), "{err}");
    assert_eq!(lock(&store).revision(), revision);
    assert!(names(&store, Kind::DestinationRule).is_empty());

    // Fixed: the next scan applies everything.
    fs::remove_file(&bad).unwrap();
    let outcome = source.scan(&store).unwrap();
    assert_eq!(
        outcome.applied,
        vec!["destinationrule.networking.istio.io/ratings created"]
    );
}

#[test]
fn objects_applied_through_the_api_are_not_the_sources() {
    let (_state, dir, store) = setup();
    let docs = config::parse_str(DR, "api").unwrap();
    lock(&store).apply(docs).unwrap();
    fs::write(dir.path().join("svc.yaml"), RATINGS).unwrap();
    let mut source = DirSource::new(dir.path());
    source.scan(&store).unwrap();
    fs::remove_file(dir.path().join("svc.yaml")).unwrap();
    let outcome = source.scan(&store).unwrap();
    assert_eq!(outcome.deleted.len(), 1);
    assert_eq!(names(&store, Kind::DestinationRule), vec!["ratings"]);
    assert!(names(&store, Kind::Service).is_empty());
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let (_state, dir, store) = setup();
    let gone = dir.path().join("nope");
    let err = DirSource::new(&gone).scan(&store).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    assert!(err.contains("fix: check it exists"), "{err}");
}

#[test]
fn subscribers_see_each_commit() {
    let (_state, dir, store) = setup();
    let mut changes = lock(&store).subscribe();
    assert_eq!(changes.borrow_and_update().revision, 0);
    fs::write(dir.path().join("svc.yaml"), RATINGS).unwrap();
    DirSource::new(dir.path()).scan(&store).unwrap();
    assert!(changes.has_changed().unwrap());
    let seen = changes.borrow_and_update().clone();
    assert_eq!(seen.revision, 1);
    assert_eq!(seen.resources.len(), 1);
}
