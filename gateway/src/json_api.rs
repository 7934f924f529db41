//! What the two JSON APIs (the admin API `/v1` and `/v0`) share: bounded request bodies, JSON
//! answers, and error answers (always JSON: API clients parse them).

use crate::errors::{ApiError, ErrorCode};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::{Serialize, de::DeserializeOwned};

/// An answer of either API.
pub type JsonResponse = Response<Full<Bytes>>;

/// Reads a body of at most `limit` bytes: 413 when the declared length or the bytes read exceed it.
pub async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large =
        || ApiError::new(ErrorCode::RequestEntityTooLarge, format!("the request body exceeds {limit} bytes"));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("cannot read the request body: {e}"))),
    }
}

/// Parses a JSON body.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid request body: {e}")))
}

/// Parses a JSON body; an empty (or all-blank) body is `T::default()`.
pub fn parse_json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { parse_json(body) }
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl Serialize) -> Result<JsonResponse, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot serialize the answer: {e}")))?;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// An empty 204.
pub fn no_content() -> JsonResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// The JSON answer of an error, whatever the client accepts.
pub fn error_response(e: &ApiError) -> JsonResponse {
    crate::errors::render(e, false)
}
