//! In-process sidecar tests over loopback: real sockets, real rustls with generated
//! certificates in Istio's layout, real metadata exchange, metrics scraped over HTTP.

mod exchange;
mod failures;
mod lifecycle;
mod pair;
mod support;
