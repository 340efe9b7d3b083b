//! One chunked body (RFC 9112 §7.1), read strictly and one byte at a time except for
//! chunk data, which it skips over (or hands out): the one chunk reader for request
//! bodies (`framing::Scanner`) and response bodies (`h1`), so that both sides of weir
//! agree on where a body ends. A size line is hex digits, optional whitespace, then
//! `;` extensions, ended by CRLF; data is followed by CRLF; a trailer line is a field
//! name, a colon and a value. Anything else (a bare LF, `5garbage`, a trailer with no
//! colon or a control byte) is refused, and so is a size line over 4 KiB, a size over
//! 2^64 - 1, or trailers over the caller's budget.

/// Longest chunk-size line, extensions included.
const MAX_LINE: usize = 4096;
/// Most hex digits in a chunk size (2^64 - 1).
const MAX_DIGITS: u32 = 16;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The framing is not what RFC 9112 allows.
    Bad(&'static str),
    /// The trailers are over their budget.
    TooLarge(&'static str),
}

impl Broken {
    pub fn reason(self) -> &'static str {
        match self {
            Broken::Bad(why) | Broken::TooLarge(why) => why,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// Whitespace after the size.
    Bws,
    /// An extension, from its `;`.
    Ext,
    /// After the size line's CR.
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line, or the empty line ending the body.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Where one chunked body is.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u32,
    line: usize,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a field value or chunk extension: visible ASCII, space, tab and
/// obs-text; no other control character.
pub(crate) fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

const BAD_LINE: Broken = Broken::Bad("invalid chunk-size line");
const BAD_DATA_END: Broken = Broken::Bad("chunk data not followed by CRLF");
const BAD_TRAILER: Broken = Broken::Bad("invalid trailer");

impl Chunked {
    /// A body at its start, whose trailer section may hold `max_trailer_bytes`.
    pub fn new(max_trailer_bytes: usize) -> Chunked {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
        }
    }

    /// The body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

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
            if self.state == State::Done {
                return Ok(Some(i));
            }
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
            self.state = self.byte(bytes[i])?;
            i += 1;
        }
        Ok(self.done().then_some(i))
    }

    fn byte(&mut self, b: u8) -> Result<State, Broken> {
        if matches!(
            self.state,
            State::Size | State::Bws | State::Ext | State::SizeLf
        ) {
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(Broken::Bad("chunk-size line too long"));
            }
        }
        if matches!(
            self.state,
            State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > self.max_trailer_bytes {
                return Err(Broken::TooLarge("trailers too large"));
            }
        }
        Ok(match self.state {
            State::Size => self.size_byte(b)?,
            State::Bws => match b {
                b' ' | b'\t' => State::Bws,
                b';' => State::Ext,
                b'\r' => State::SizeLf,
                _ => return Err(BAD_LINE),
            },
            State::Ext => match b {
                b'\r' => State::SizeLf,
                _ if is_field_byte(b) => State::Ext,
                _ => return Err(BAD_LINE),
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Data(self.size),
                _ => return Err(BAD_LINE),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(BAD_DATA_END),
            },
            State::DataLf => match b {
                b'\n' => {
                    (self.size, self.digits, self.line) = (0, 0, 0);
                    State::Size
                }
                _ => return Err(BAD_DATA_END),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                _ if is_tchar(b) => State::TrailerName,
                _ => return Err(BAD_TRAILER),
            },
            State::TrailerName => match b {
                b':' => State::TrailerValue,
                _ if is_tchar(b) => State::TrailerName,
                _ => return Err(BAD_TRAILER),
            },
            State::TrailerValue => match b {
                b'\r' => State::TrailerLf,
                _ if is_field_byte(b) => State::TrailerValue,
                _ => return Err(BAD_TRAILER),
            },
            State::TrailerLf => match b {
                b'\n' => State::TrailerStart,
                _ => return Err(BAD_TRAILER),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(Broken::Bad("invalid end of chunked body")),
            },
            State::Data(_) | State::Done => unreachable!("handled in feed_data"),
        })
    }

    fn size_byte(&mut self, b: u8) -> Result<State, Broken> {
        if let Some(d) = (b as char).to_digit(16) {
            self.digits += 1;
            if self.digits > MAX_DIGITS {
                return Err(Broken::Bad("chunk size too large"));
            }
            self.size = self.size << 4 | u64::from(d);
            return Ok(State::Size);
        }
        match b {
            _ if self.digits == 0 => Err(BAD_LINE),
            b'\r' => Ok(State::SizeLf),
            b';' => Ok(State::Ext),
            b' ' | b'\t' => Ok(State::Bws),
            _ => Err(BAD_LINE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 64;

    fn end_of(body: &[u8]) -> Result<Option<usize>, Broken> {
        Chunked::new(BUDGET).feed(body)
    }

    #[test]
    fn finds_the_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1";
        assert_eq!(end_of(body), Ok(Some(body.len() - 8)));
        let ext = b"5;name=v\r\nhello\r\nA \t;x\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(end_of(ext), Ok(Some(ext.len())));
    }

    #[test]
    fn byte_by_byte_equals_at_once() {
        let body = b"1f\r\n0123456789012345678901234567890\r\n0\r\nA: b\r\n\r\n";
        let mut c = Chunked::new(BUDGET);
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c.feed(std::slice::from_ref(b)).unwrap() {
                assert_eq!(n, 1);
                end = Some(i + 1);
            }
        }
        assert_eq!(end, Some(body.len()));
        assert!(c.done());
    }

    #[test]
    fn refuses_broken_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"5garbage\r\nhello",
            b"5 x\r\n",
            b"\r\n",
            b";x\r\n",
            b"2\r\nabX",
            b"2\r\nab\rX",
            b"11111111111111111\r\n",
            b"1;\x01\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX-T: \x00\r\n\r\n",
            b"0\r\n\rX",
        ] {
            assert!(
                matches!(end_of(bad), Err(Broken::Bad(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long: Vec<u8> = std::iter::once(b'1')
            .chain(std::iter::repeat_n(b';', MAX_LINE))
            .collect();
        assert_eq!(end_of(&long), Err(Broken::Bad("chunk-size line too long")));
        let mut trailers = b"0\r\nX-T: ".to_vec();
        trailers.extend(std::iter::repeat_n(b'a', BUDGET));
        assert_eq!(
            end_of(&trailers),
            Err(Broken::TooLarge("trailers too large"))
        );
    }

    #[test]
    fn data_comes_without_the_framing() {
        let mut data = Vec::new();
        let body = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n";
        let mut c = Chunked::new(BUDGET);
        for piece in body.chunks(3) {
            c.feed_data(piece, |d| data.extend_from_slice(d)).unwrap();
        }
        assert_eq!(data, b"hello world");
    }

    #[test]
    fn incomplete_is_not_the_end() {
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
        assert_eq!(end_of(b"0\r\n\r"), Ok(None));
        let mut c = Chunked::new(BUDGET);
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(c.feed(b"more"), Ok(Some(0)));
    }
}
