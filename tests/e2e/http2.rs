//! HTTP/2 from clients: a connection's streams are served side by side
//! (inside the connection's task), and one stream's failure or reset stays
//! its own.

use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use hyper::body::Incoming;

use crate::common::*;

/// A gateway in front of a backend that waits `delay` before answering
/// with the request's path.
async fn delayed(delay: Duration) -> (Backend, TestGateway) {
    let backend = Backend::start(move |req: http::Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(body(req.uri().path().to_owned()))
    })
    .await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    (backend, gw)
}

#[tokio::test]
async fn streams_of_one_connection_are_served_side_by_side() {
    let (_backend, gw) = delayed(Duration::from_millis(400)).await;
    let h2 = h2c_client();
    // One connection (the client multiplexes), 40 streams at once.
    let started = Instant::now();
    let requests = (0..40).map(|i| {
        let (c, url) = (h2.clone(), gw.url("web", &format!("/s/{i}")));
        tokio::spawn(async move {
            let r = c.get(&url).send().await.unwrap();
            (r.version(), r.status(), r.text().await.unwrap())
        })
    });
    let answers = futures_util::future::join_all(requests).await;
    let took = started.elapsed();
    for (i, answer) in answers.into_iter().enumerate() {
        let (version, status, text) = answer.unwrap();
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, format!("/s/{i}"));
    }
    // One after another would take 16 s.
    assert!(took < Duration::from_secs(3), "40 streams took {took:?}");
}

#[tokio::test]
async fn a_stream_the_client_gives_up_on_leaves_the_others_running() {
    let (_backend, gw) = delayed(Duration::from_millis(300)).await;
    let h2 = h2c_client();
    let (c, url) = (h2.clone(), gw.url("web", "/kept"));
    let kept = tokio::spawn(async move { c.get(&url).send().await.unwrap().text().await });
    // Dropped before its answer: the client resets the stream.
    let abandoned = h2.get(gw.url("web", "/abandoned")).send();
    let _ = tokio::time::timeout(Duration::from_millis(50), abandoned).await;
    assert_eq!(kept.await.unwrap().unwrap(), "/kept");
    // The connection still serves new streams.
    let r = h2.get(gw.url("web", "/after")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "/after");
}
