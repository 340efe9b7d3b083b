//! Where a chunked response body ends. The bytes are relayed as they are; this only
//! follows the framing (chunk sizes, data, trailers) so that the next response on the
//! upstream connection starts exactly after it. Bounded: a size line or the trailer
//! section longer than a few KiB is refused, and so is anything not CRLF-framed.

/// Longest chunk-size line (size and extensions).
const MAX_LINE: usize = 4 << 10;
/// Most trailer bytes after the last chunk.
const MAX_TRAILERS: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// Chunk extensions, up to CR.
    Ext,
    /// LF after a size line.
    SizeLf,
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// Start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    TrailerLf,
    /// LF of the final CRLF.
    LastLf,
    Done,
}

/// The framing of a chunked body was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

/// Follows one chunked body.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u32,
    line: usize,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl Chunked {
    /// Reads `bytes`; `Some(n)` when the body ended after its first `n` bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Broken> {
        self.feed_data(bytes, |_| {})
    }

    /// `feed`, handing each piece of chunk data to `data` (for a client that is not
    /// sent the chunked framing itself: HTTP/2).
    pub fn feed_data(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, Broken> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let take = left.min((bytes.len() - i) as u64);
                data(&bytes[i..i + take as usize]);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            self.byte(bytes[i])?;
            i += 1;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn byte(&mut self, b: u8) -> Result<(), Broken> {
        self.state = match self.state {
            State::Size | State::Ext => {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err(Broken);
                }
                self.size_byte(b)?
            }
            State::SizeLf if b == b'\n' => {
                self.line = 0;
                if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(std::mem::take(&mut self.size))
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => {
                self.digits = 0;
                State::Size
            }
            State::TrailerStart if b == b'\r' => State::LastLf,
            State::TrailerStart | State::Trailer => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(Broken);
                }
                if b == b'\r' {
                    State::TrailerLf
                } else {
                    State::Trailer
                }
            }
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::LastLf if b == b'\n' => State::Done,
            _ => return Err(Broken),
        };
        Ok(())
    }

    fn size_byte(&mut self, b: u8) -> Result<State, Broken> {
        if self.state == State::Size {
            if let Some(d) = (b as char).to_digit(16) {
                self.digits += 1;
                if self.digits > 16 {
                    return Err(Broken);
                }
                self.size = (self.size << 4) | u64::from(d);
                return Ok(State::Size);
            }
            if self.digits == 0 {
                return Err(Broken);
            }
        }
        match b {
            b'\r' => Ok(State::SizeLf),
            b'\n' => Err(Broken),
            _ => Ok(State::Ext),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, Broken> {
        Chunked::default().feed(body)
    }

    #[test]
    fn finds_the_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1";
        assert_eq!(end_of(body), Ok(Some(body.len() - 8)));
        let ext = b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(end_of(ext), Ok(Some(ext.len())));
    }

    #[test]
    fn byte_by_byte_equals_at_once() {
        let body = b"1f\r\n0123456789012345678901234567890\r\n0\r\nA: b\r\n\r\n";
        let mut c = Chunked::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c.feed(std::slice::from_ref(b)).unwrap() {
                assert_eq!(n, 1);
                end = Some(i + 1);
            }
        }
        assert_eq!(end, Some(body.len()));
        assert_eq!(c.state, State::Done);
    }

    #[test]
    fn refuses_broken_framing() {
        assert_eq!(end_of(b"x\r\n"), Err(Broken));
        assert_eq!(end_of(b"5\nhello"), Err(Broken));
        assert_eq!(end_of(b"2\r\nabX"), Err(Broken));
        assert_eq!(end_of(b"11111111111111111\r\n"), Err(Broken));
        let long = [b'1'; 1].iter().chain([b';'; MAX_LINE].iter()).copied();
        assert_eq!(end_of(&long.collect::<Vec<_>>()), Err(Broken));
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
        assert_eq!(end_of(&trailers), Err(Broken));
    }

    #[test]
    fn data_comes_without_the_framing() {
        let mut data = Vec::new();
        let body = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n";
        let mut c = Chunked::default();
        for piece in body.chunks(3) {
            c.feed_data(piece, |d| data.extend_from_slice(d)).unwrap();
        }
        assert_eq!(data, b"hello world");
    }

    #[test]
    fn incomplete_is_not_the_end() {
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
        assert_eq!(end_of(b"0\r\n\r"), Ok(None));
    }
}
