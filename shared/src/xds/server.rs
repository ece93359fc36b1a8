//! The serving side of delta ADS on the wire: resources encoded once and shared by every
//! subscriber, and a gRPC service that streams responses built from them.
//!
//! tonic's generated server would encode each `DeltaDiscoveryResponse` whole into a buffer of
//! the stream's own, and that buffer keeps the capacity of the largest message for as long as
//! the stream lives: a full-state response of a large mesh (megabytes) cost every subscriber
//! its size for good. Here a response is a list of shared [`EncodedResource`]s; its body is
//! written in chunks of at most about [`CHUNK`] bytes as HTTP/2 asks for data, so what a
//! subscriber costs beyond its list of pointers is one chunk in flight. The bytes on the wire
//! are exactly prost's encoding of the same `DeltaDiscoveryResponse` (a test compares them).
//!
//! Owns framing only: which resources a subscriber gets, and when, is the caller's business
//! (the controller's `xds::session`). Requests are decoded by tonic as usual.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use hyper::body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::Status;

use crate::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use crate::proto::Any;

/// The gRPC method served.
pub const DELTA_ADS_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The most a body writes in one go (unless one resource is larger): tonic's own yield
/// threshold, two HTTP/2 frames of the default size. Bounds what a subscriber whose peer
/// reads slowly holds beyond its shared resources.
pub const CHUNK: usize = 32 * 1024;
/// `resources` is field 2 of `DeltaDiscoveryResponse`, length-delimited: tag (2 << 3) | 2.
const RESOURCES_TAG: u8 = (2 << 3) | 2;
/// A gRPC message prefix: the compressed flag and the length, big-endian.
const PREFIX: usize = 5;

/// One resource as the bytes of its `Resource` message, encoded once when it is published.
/// Cloning shares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResource(Bytes);

impl EncodedResource {
    pub fn new(name: &str, version: &str, body: Any) -> Self {
        let resource =
            Resource { name: name.to_owned(), version: version.to_owned(), resource: Some(body), ..Default::default() };
        EncodedResource(resource.encode_to_vec().into())
    }

    /// The `Resource` again (the admin page and tests read it; the payload stays shared).
    pub fn decode(&self) -> Result<Resource, prost::DecodeError> {
        Resource::decode(self.0.clone())
    }

    /// How many bytes it takes within a response: tag, length and the message.
    fn field_len(&self) -> usize {
        1 + prost::encoding::encoded_len_varint(self.0.len() as u64) + self.0.len()
    }

    fn put_field(&self, buf: &mut BytesMut) {
        buf.put_u8(RESOURCES_TAG);
        prost::encoding::encode_varint(self.0.len() as u64, buf);
        buf.put_slice(&self.0);
    }
}

/// A `DeltaDiscoveryResponse` whose resources are shared encoded bytes.
#[derive(Debug, Default, Clone)]
pub struct EncodedResponse {
    pub type_url: &'static str,
    pub resources: Vec<EncodedResource>,
    /// Names the subscriber must drop (shared with whoever remembered them).
    pub removed_resources: Vec<Arc<str>>,
    pub nonce: String,
}

impl EncodedResponse {
    /// The gRPC message: prefix, then the fields in tag order as prost writes them (the
    /// resources, then type URL, nonce and removals, which a prost-encoded response without
    /// resources is exactly).
    fn into_chunks(self) -> Chunks {
        let rest = DeltaDiscoveryResponse {
            type_url: self.type_url.to_owned(),
            nonce: self.nonce,
            removed_resources: self.removed_resources.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
        .encode_to_vec();
        let len = self.resources.iter().map(EncodedResource::field_len).sum::<usize>() + rest.len();
        Chunks { len, prefix_sent: false, resources: self.resources.into_iter(), rest: Some(rest) }
    }
}

/// One response being written out, a chunk at a time.
struct Chunks {
    /// Length of the message after the prefix.
    len: usize,
    prefix_sent: bool,
    resources: std::vec::IntoIter<EncodedResource>,
    /// The fields after the resources, until written.
    rest: Option<Vec<u8>>,
}

impl Chunks {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, Status> {
        let mut buf = BytesMut::with_capacity(CHUNK.min(PREFIX + self.len));
        if !self.prefix_sent {
            self.prefix_sent = true;
            let len = u32::try_from(self.len).map_err(|_| Status::resource_exhausted("xDS response over 4 GiB"))?;
            buf.put_u8(0);
            buf.put_u32(len);
        }
        while buf.len() < CHUNK {
            match self.resources.next() {
                Some(r) => r.put_field(&mut buf),
                None => match self.rest.take() {
                    Some(rest) => buf.put_slice(&rest),
                    None => break,
                },
            }
        }
        Ok((!buf.is_empty()).then(|| buf.freeze()))
    }
}

/// The body of one ADS stream: responses from the session as they come, then `grpc-status`
/// trailers when the session ends (OK) or a response cannot be framed.
pub struct ResponseBody {
    responses: mpsc::Receiver<EncodedResponse>,
    current: Option<Chunks>,
    done: bool,
}

impl ResponseBody {
    pub fn new(responses: mpsc::Receiver<EncodedResponse>) -> Self {
        ResponseBody { responses, current: None, done: false }
    }

    fn trailers(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(chunks) = this.current.as_mut() {
                match chunks.next_chunk() {
                    Ok(Some(chunk)) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                    Ok(None) => this.current = None,
                    Err(status) => return this.trailers(status),
                }
            }
            match this.responses.poll_recv(cx) {
                Poll::Ready(Some(response)) => this.current = Some(response.into_chunks()),
                Poll::Ready(None) => return this.trailers(Status::ok("")),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Starts one ADS stream: checks the caller, starts its session and hands back where the
/// session's responses come from. An error ends the call with that status.
pub trait DeltaAds: Send + Sync + 'static {
    fn start(
        &self,
        request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> impl Future<Output = Result<mpsc::Receiver<EncodedResponse>, Status>> + Send;
}

/// `AggregatedDiscoveryService` with only `DeltaAggregatedResources`, for tonic's router.
pub struct DeltaAdsServer<S> {
    service: Arc<S>,
    max_decoding_message_size: usize,
}

impl<S> DeltaAdsServer<S> {
    pub fn new(service: S, max_decoding_message_size: usize) -> Self {
        DeltaAdsServer { service: Arc::new(service), max_decoding_message_size }
    }
}

impl<S> Clone for DeltaAdsServer<S> {
    fn clone(&self) -> Self {
        DeltaAdsServer { service: self.service.clone(), max_decoding_message_size: self.max_decoding_message_size }
    }
}

impl<S> NamedService for DeltaAdsServer<S> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<S: DeltaAds> tower_service::Service<http::Request<Body>> for DeltaAdsServer<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            if request.uri().path() != DELTA_ADS_PATH {
                return Ok(Status::unimplemented("only DeltaAggregatedResources is served").into_http());
            }
            let decoder = tonic_prost::ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default().decoder();
            let request = request.map(|body| Streaming::new_request(decoder, body, None, Some(max)));
            match service.start(tonic::Request::from_http(request)).await {
                Ok(responses) => {
                    let mut response = http::Response::new(Body::new(ResponseBody::new(responses)));
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::type_url::ADDRESS;

    fn resource(name: &str, size: usize) -> Resource {
        let body = Any { type_url: ADDRESS.into(), value: vec![7; size].into() };
        Resource { name: name.into(), version: "0123456789abcdef".into(), resource: Some(body), ..Default::default() }
    }

    /// Everything a response writes, chunk by chunk.
    fn written(response: EncodedResponse) -> Vec<Bytes> {
        let mut chunks = response.into_chunks();
        std::iter::from_fn(|| chunks.next_chunk().ok().flatten()).collect()
    }

    /// The bytes on the wire are prost's encoding of the same response behind a gRPC prefix,
    /// whatever the size, and no chunk is larger than `CHUNK` plus one resource.
    #[test]
    fn framing_is_prost_encoding_in_bounded_chunks() {
        let cases: Vec<(Vec<Resource>, Vec<&str>)> = vec![
            (Vec::new(), Vec::new()),
            (vec![resource("a", 10)], vec!["gone"]),
            ((0..2000).map(|i| resource(&format!("pod-{i}"), 200 + i % 300)).collect(), vec!["x", "y"]),
            (vec![resource("small", 1), resource("huge", 3 * CHUNK), resource("after", 5)], Vec::new()),
        ];
        for (resources, removed) in cases {
            let want = DeltaDiscoveryResponse {
                type_url: ADDRESS.into(),
                resources: resources.clone(),
                removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
                nonce: "7-3".into(),
                ..Default::default()
            }
            .encode_to_vec();
            let response = EncodedResponse {
                type_url: ADDRESS,
                resources: resources
                    .iter()
                    .map(|r| {
                        let body = r.resource.clone().unwrap_or_default();
                        EncodedResource::new(&r.name, &r.version, body)
                    })
                    .collect(),
                removed_resources: removed.iter().map(|n| Arc::from(*n)).collect(),
                nonce: "7-3".into(),
            };
            let chunks = written(response);
            let largest = resources.iter().map(|r| r.encoded_len() + 4).max().unwrap_or(0);
            assert!(chunks.iter().all(|c| c.len() < CHUNK + largest), "a chunk over the bound");
            let wire: Vec<u8> = chunks.concat();
            assert_eq!(wire[0], 0, "uncompressed");
            assert_eq!(u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize, want.len());
            assert_eq!(&wire[PREFIX..], &want[..]);
        }
    }

    #[test]
    fn an_encoded_resource_decodes_to_itself() {
        let r = resource("n", 40);
        let encoded = EncodedResource::new(&r.name, &r.version, r.resource.clone().unwrap_or_default());
        assert_eq!(encoded.decode().ok(), Some(r));
    }
}
