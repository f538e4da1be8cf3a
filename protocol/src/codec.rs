//! Bounded line framing.
//!
//! Wraps `tokio_util`'s `LinesCodec` with a maximum length, and tells a clean close (the
//! stream ends on a line boundary) apart from a truncated line (bytes after the last `\n`),
//! which `LinesCodec` would otherwise hand over as if it were a complete message.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};

/// Default maximum line length: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Why framing failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("line exceeds the maximum length of {max} bytes")]
    TooLong { max: usize },
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("connection closed in the middle of a line ({len} bytes without a newline)")]
    Truncated { len: usize },
    #[error("outgoing message contains a newline")]
    EmbeddedNewline,
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// `\n`-delimited UTF-8 lines of at most `max` bytes (excluding the newline).
#[derive(Debug, Clone)]
pub struct LineCodec {
    inner: LinesCodec,
    max: usize,
}

impl LineCodec {
    pub fn new(max: usize) -> Self {
        LineCodec {
            inner: LinesCodec::new_with_max_length(max),
            max,
        }
    }

    pub fn max_length(&self) -> usize {
        self.max
    }

    fn map(&self, e: LinesCodecError) -> CodecError {
        match e {
            LinesCodecError::MaxLineLengthExceeded => CodecError::TooLong { max: self.max },
            LinesCodecError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                CodecError::NotUtf8
            }
            LinesCodecError::Io(io) => CodecError::Io(io),
        }
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        LineCodec::new(DEFAULT_MAX_LINE)
    }
}

impl Decoder for LineCodec {
    type Item = String;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, CodecError> {
        self.inner.decode(buf).map_err(|e| self.map(e))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<String>, CodecError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.iter().all(u8::is_ascii_whitespace) => {
                buf.clear();
                Ok(None)
            }
            None => {
                let len = buf.len();
                buf.clear();
                Err(CodecError::Truncated { len })
            }
        }
    }
}

impl<T: AsRef<str>> Encoder<T> for LineCodec {
    type Error = CodecError;

    fn encode(&mut self, line: T, buf: &mut BytesMut) -> Result<(), CodecError> {
        let line = line.as_ref();
        if line.len() > self.max {
            return Err(CodecError::TooLong { max: self.max });
        }
        if line.contains('\n') {
            return Err(CodecError::EmbeddedNewline);
        }
        buf.reserve(line.len() + 1);
        buf.put(line.as_bytes());
        buf.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(codec: &mut LineCodec, bytes: &[u8]) -> (Vec<String>, Option<String>) {
        let mut buf = BytesMut::from(bytes);
        let mut lines = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(l)) => lines.push(l),
                Ok(None) => break,
                Err(e) => return (lines, Some(e.to_string())),
            }
        }
        match codec.decode_eof(&mut buf) {
            Ok(Some(l)) => lines.push(l),
            Ok(None) => {}
            Err(e) => return (lines, Some(e.to_string())),
        }
        (lines, None)
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut c = LineCodec::new(64);
        let (lines, err) = feed(&mut c, b"a\nb\r\n\nc\n");
        assert_eq!(lines, vec!["a", "b", "", "c"]);
        assert!(err.is_none());
    }

    #[test]
    fn over_long_line_is_an_error() {
        let mut c = LineCodec::new(8);
        let (lines, err) = feed(&mut c, b"ok\n0123456789abc\n");
        assert_eq!(lines, vec!["ok"]);
        assert_eq!(
            err.as_deref(),
            Some("line exceeds the maximum length of 8 bytes")
        );
    }

    #[test]
    fn truncated_line_is_told_apart_from_clean_close() {
        let mut c = LineCodec::new(64);
        let (lines, err) = feed(&mut c, b"whole\npart");
        assert_eq!(lines, vec!["whole"]);
        assert_eq!(
            err.as_deref(),
            Some("connection closed in the middle of a line (4 bytes without a newline)")
        );
        let mut c = LineCodec::new(64);
        assert_eq!(feed(&mut c, b"whole\n  "), (vec!["whole".to_owned()], None));
    }

    #[test]
    fn invalid_utf8_is_named() {
        let mut c = LineCodec::new(64);
        let (_, err) = feed(&mut c, b"\xff\xfe\n");
        assert_eq!(err.as_deref(), Some("line is not valid UTF-8"));
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::new();
        assert!(matches!(
            c.encode("12345", &mut buf),
            Err(CodecError::TooLong { max: 4 })
        ));
        assert!(matches!(
            c.encode("a\nb", &mut buf),
            Err(CodecError::EmbeddedNewline)
        ));
        c.encode("1234", &mut buf).unwrap();
        assert_eq!(&buf[..], b"1234\n");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), max in 1usize..256) {
            let mut c = LineCodec::new(max);
            let _ = feed(&mut c, &bytes);
        }

        #[test]
        fn arbitrary_bytes_through_decoder_and_message_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut c = LineCodec::new(1024);
            let (lines, _) = feed(&mut c, &bytes);
            for l in lines {
                let _ = crate::Message::decode(&l);
            }
        }
    }
}
