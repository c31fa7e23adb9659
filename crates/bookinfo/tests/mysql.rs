//! ratings v2 against a real MariaDB bootstrapped by `bookinfo::mysqldb` in a temporary
//! directory on a free loopback port.

mod common;

use std::path::Path;
use std::time::Duration;

use bookinfo::details::{self, DetailsConfig};
use bookinfo::mysqldb::{self, MariaDb, MysqldbConfig};
use bookinfo::productpage::{self, ProductpageConfig};
use bookinfo::ratings::{self, RatingsConfig};
use bookinfo::reviews::{self, ReviewsConfig};
use common::{env, get, get_json, spawn};
use mysql_async::prelude::Queryable;
use serde_json::json;

const PASSWORD: &str = "pass'word";

fn require_mariadb() {
    for program in ["mariadbd", "mariadb-install-db"] {
        let found = [
            "/usr/sbin",
            "/usr/bin",
            "/usr/local/sbin",
            "/usr/local/bin",
            "/sbin",
        ]
        .iter()
        .any(|d| Path::new(d).join(program).is_file());
        assert!(
            found,
            "{program} is missing: these tests need a real MariaDB; install it with `apt-get install mariadb-server`"
        );
    }
}

async fn start_db(datadir: &Path) -> MariaDb {
    let port = common::closed_port().await;
    let mut config = MysqldbConfig::from_env(
        &env(vec![("MYSQL_ROOT_PASSWORD", PASSWORD.into())]),
        datadir,
    )
    .unwrap();
    config.bind_address = "127.0.0.1".into();
    config.port = port;
    mysqldb::start(config)
        .await
        .unwrap_or_else(|e| panic!("starting MariaDB: {e}"))
}

/// root@'%' over TCP with the password, as the ratings app connects.
async fn tcp_conn(port: u16) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .pass(Some(PASSWORD))
        .db_name(Some("test"))
        .prefer_socket(false);
    mysql_async::Conn::new(opts)
        .await
        .expect("root@'%' connects over TCP with the password")
}

async fn connections(conn: &mut mysql_async::Conn) -> u64 {
    let row: Option<(String, u64)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Connections'")
        .await
        .unwrap();
    row.unwrap().1
}

fn ratings_config(db_port: u16) -> RatingsConfig {
    RatingsConfig::from_env(&env(vec![
        ("SERVICE_VERSION", "v2".into()),
        ("DB_TYPE", "mysql".into()),
        ("MYSQL_DB_HOST", "127.0.0.1".into()),
        ("MYSQL_DB_PORT", db_port.to_string()),
        ("MYSQL_DB_USER", "root".into()),
        ("MYSQL_DB_PASSWORD", PASSWORD.into()),
    ]))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_v2_reads_mariadb_one_connection_per_request() {
    require_mariadb();
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("data");
    let db = start_db(&datadir).await;
    let db_port = db.config().port;

    let ratings = spawn(|l| ratings::serve(l, ratings_config(db_port))).await;
    assert_eq!(
        get_json(ratings.port, "/ratings/0").await,
        (200, json!({"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}))
    );

    // A change in the table shows in the next answer.
    let mut admin = tcp_conn(db_port).await;
    admin
        .query_drop("UPDATE ratings SET Rating = 2 WHERE ReviewID = 1")
        .await
        .unwrap();
    assert_eq!(
        get_json(ratings.port, "/ratings/0").await,
        (200, json!({"id":0,"ratings":{"Reviewer1":2,"Reviewer2":4}}))
    );

    // Every request opens exactly one new database connection.
    let before = connections(&mut admin).await;
    for _ in 0..3 {
        assert_eq!(get_json(ratings.port, "/ratings/0").await.0, 200);
    }
    assert_eq!(connections(&mut admin).await - before, 3);

    // The whole chain: productpage -> reviews v3 -> ratings v2 -> MariaDB.
    let details = spawn(|l| details::serve(l, DetailsConfig::default())).await;
    let reviews_config = ReviewsConfig::from_env(&env(vec![
        ("SERVICE_VERSION", "v3".into()),
        ("RATINGS_HOSTNAME", "127.0.0.1".into()),
        ("RATINGS_SERVICE_PORT", ratings.port.to_string()),
    ]))
    .unwrap();
    let reviews = spawn(|l| reviews::serve(l, reviews_config)).await;
    let page_config = ProductpageConfig::from_env(&env(vec![
        ("DETAILS_HOSTNAME", "127.0.0.1".into()),
        ("DETAILS_SERVICE_PORT", details.port.to_string()),
        ("REVIEWS_HOSTNAME", "127.0.0.1".into()),
        ("REVIEWS_SERVICE_PORT", reviews.port.to_string()),
    ]))
    .unwrap();
    let page = spawn(|l| productpage::serve(l, page_config)).await;
    let (status, html) = get(page.port, "/productpage").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("data-stars=\"2\" data-color=\"red\""),
        "{html}"
    );
    assert!(
        html.contains("data-stars=\"4\" data-color=\"red\""),
        "{html}"
    );
    assert_eq!(
        html.matches("<span class=\"star full\">★</span>").count(),
        6
    );

    // Database down: Istio's error shape, and reviews degrade to its error text.
    let _ = admin.disconnect().await;
    db.shutdown().await.unwrap();
    assert_eq!(
        get_json(ratings.port, "/ratings/0").await,
        (
            500,
            json!({"error":"could not connect to ratings database"})
        )
    );
    let (_, html) = get(page.port, "/productpage").await;
    assert_eq!(
        html.matches("Ratings service is currently unavailable")
            .count(),
        2
    );

    // Restarting on the same directory keeps the data and the credentials.
    let db = start_db(&datadir).await;
    let ratings = spawn(|l| ratings::serve(l, ratings_config(db.config().port))).await;
    assert_eq!(
        get_json(ratings.port, "/ratings/0").await,
        (200, json!({"id":0,"ratings":{"Reviewer1":2,"Reviewer2":4}}))
    );
    tokio::time::timeout(Duration::from_secs(60), db.shutdown())
        .await
        .expect("MariaDB shutdown timed out")
        .unwrap();

    // The same directory with another password is refused with the fix spelled out.
    let mut config = MysqldbConfig::from_env(
        &env(vec![("MYSQL_ROOT_PASSWORD", "other".into())]),
        &datadir,
    )
    .unwrap();
    config.bind_address = "127.0.0.1".into();
    config.port = common::closed_port().await;
    let err = mysqldb::start(config).await.unwrap_err().to_string();
    assert!(
        err.contains("refuses root: Access denied for user 'root'@'localhost'"),
        "{err}"
    );
    assert!(err.ends_with("was initialised with another MYSQL_ROOT_PASSWORD, use that one or start from an empty data directory"), "{err}");
}
