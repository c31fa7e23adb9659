//! Which `bookinfo` subcommand stands in for which Istio sample image, so a runtime
//! can turn a Deployment's container into a local process: run the `bookinfo` binary
//! with [`local_command`]'s arguments followed by the container's own `args`, with the
//! container's `env`.

/// An image this crate knows but cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {image} cannot run locally: {reason}")]
pub struct UnsupportedImage {
    /// The image reference as given.
    pub image: String,
    /// Why, and what to use instead.
    pub reason: &'static str,
}

/// The image's name without registry, path, tag or digest:
/// `registry.istio.io/release/examples-bookinfo-reviews-v3:1.20.3` → `examples-bookinfo-reviews-v3`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The `bookinfo` arguments for `image`: `Ok(Some(args))` for a Bookinfo or tcp-echo
/// image, `Ok(None)` for an image that is not one of them, `Err` for the MongoDB image.
///
/// `mysqldb` needs `--data-dir <dir>` appended by the runtime (a per-pod directory);
/// its manifest's `--default-authentication-plugin mysql_native_password` is accepted.
pub fn local_command(image: &str) -> Result<Option<Vec<&'static str>>, UnsupportedImage> {
    let args: &[&'static str] = match image_name(image) {
        "examples-bookinfo-productpage-v1" | "examples-bookinfo-productpage-v-flooding" => &["productpage"],
        "examples-bookinfo-details-v1" | "examples-bookinfo-details-v2" => &["details"],
        "examples-bookinfo-reviews-v1" => &["reviews", "--version", "v1"],
        "examples-bookinfo-reviews-v2" => &["reviews", "--version", "v2"],
        "examples-bookinfo-reviews-v3" => &["reviews", "--version", "v3"],
        "examples-bookinfo-ratings-v1" => &["ratings", "--version", "v1"],
        "examples-bookinfo-ratings-v2" => &["ratings", "--version", "v2"],
        "examples-bookinfo-mysqldb" => &["mysqldb"],
        "tcp-echo-server" => &["tcp-echo"],
        "examples-bookinfo-mongodb" => {
            return Err(UnsupportedImage {
                image: image.to_string(),
                reason: "MongoDB is not supported by the local runtime; use the MySQL variant instead: \
                         bookinfo-mysql.yaml, bookinfo-ratings-v2-mysql.yaml and virtual-service-ratings-mysql.yaml",
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(args.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_strip_registry_tag_and_digest() {
        assert_eq!(
            image_name("registry.istio.io/release/examples-bookinfo-reviews-v3:1.20.3"),
            "examples-bookinfo-reviews-v3"
        );
        assert_eq!(
            image_name("localhost:5000/tcp-echo-server@sha256:abc"),
            "tcp-echo-server"
        );
        assert_eq!(image_name("nginx"), "nginx");
    }

    #[test]
    fn istio_images_map_to_subcommands() {
        let cmd = |i| local_command(i).unwrap();
        assert_eq!(
            cmd("registry.istio.io/release/examples-bookinfo-reviews-v3:1.20.3"),
            Some(vec!["reviews", "--version", "v3"])
        );
        assert_eq!(
            cmd("registry.istio.io/release/examples-bookinfo-ratings-v2:1.20.3"),
            Some(vec!["ratings", "--version", "v2"])
        );
        assert_eq!(
            cmd("registry.istio.io/release/examples-bookinfo-mysqldb:1.20.3"),
            Some(vec!["mysqldb"])
        );
        assert_eq!(
            cmd("registry.istio.io/release/tcp-echo-server:1.3"),
            Some(vec!["tcp-echo"])
        );
        assert_eq!(cmd("docker.io/library/nginx:1.25"), None);
        let err = local_command("registry.istio.io/release/examples-bookinfo-mongodb:1.20.3")
            .unwrap_err();
        assert!(err.to_string().contains("bookinfo-ratings-v2-mysql.yaml"));
    }
}
