//! The errors hyper answers by itself, in the API's error shape.
//!
//! A request hyper cannot parse never reaches the router: hyper writes `400 Bad Request`,
//! `414 URI Too Long` or `431 Request Header Fields Too Large` with an empty body
//! (`content-length: 0`) and closes the connection, and offers no hook for the body. So the
//! API's connections run through [`JsonErrors`], which recognizes exactly that head on the
//! way out and writes the same status with a `{"error":{"msg","code"}}` body instead. No
//! response of the router has that shape (every error it answers carries a JSON body, see
//! `api::json_errors`), so nothing else is touched.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An API connection's stream with hyper's own error heads rewritten.
pub struct JsonErrors<S> {
    inner: S,
    /// A rewritten response not yet fully written.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    pub fn new(inner: S) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The JSON response replacing `head` if it is one of hyper's bodiless parse-error answers.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, msg) = if head.starts_with(b"HTTP/1.1 400 ") {
        (400, "Bad Request", "the request could not be parsed")
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (414, "URI Too Long", "the request's path is too long")
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "Request Header Fields Too Large",
            "the request's headers are too large",
        )
    } else {
        return None;
    };
    let text = std::str::from_utf8(head).ok()?;
    let end = text.find("\r\n\r\n")?;
    // The whole write is the head, and it says there is no body.
    let bodiless = text[..end]
        .split("\r\n")
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if end + 4 != text.len() || !bodiless {
        return None;
    }
    let body =
        serde_json::json!({"error": {"msg": msg, "code": molar_protocol::codes::INVALID_REQUEST}})
            .to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is pending; ready when nothing is.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.drive(cx))?;
        if let Some(replacement) = rewrite(buf) {
            self.pending = replacement;
            // Taken whole: the replacement goes out on the next write, flush or shutdown.
            let _ = self.drive(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drive(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drive(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each response as one flat buffer, so a head is
    // always seen whole by `poll_write`.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_bodiless_parse_errors_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 23:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 "));
        assert!(h.contains("content-type: application/json"));
        assert!(h.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        // A response with a body, another status, or a head with more after it: untouched.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(rewrite(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
