//! Integration tests of the tracker: the Redis peer store against a real `redis-server`, the
//! service over real mTLS, and the origin client against gRPC test doubles. One test binary,
//! so the suite links once.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod origin_client;
mod redis_store;
mod service;
mod support;
