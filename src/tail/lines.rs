//! Splits a byte stream into complete lines, keeping byte offsets exact.
//!
//! Input arrives in reads of arbitrary size; a line may straddle any number
//! of them. Only lines ending in `\n` are emitted: a partial last line stays
//! pending until its newline arrives (it is the writer's line still being
//! written). A line longer than the limit is not buffered whole: its first
//! bytes are kept for the quarantine and the rest is skipped up to its
//! newline, so a runaway line costs bounded memory and never shifts the
//! offsets of the lines after it.

/// One unit of output, with the file offsets it covers.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete line, without its `\n`. `start` is the offset of its first
    /// byte, and the line ends at `start + line.len() + 1`.
    Line { start: u64, line: &'a [u8] },
    /// A line longer than the limit: `len` bytes including `\n`, of which
    /// `head` are the first.
    TooLong {
        start: u64,
        len: u64,
        head: &'a [u8],
    },
}

impl Piece<'_> {
    /// A complete line's bytes; `None` for an over-long one.
    pub fn line(&self) -> Option<&[u8]> {
        match self {
            Piece::Line { line, .. } => Some(line),
            Piece::TooLong { .. } => None,
        }
    }

    /// The offset just past this piece's newline.
    pub fn end(&self) -> u64 {
        match self {
            Piece::Line { start, line } => start + line.len() as u64 + 1,
            Piece::TooLong { start, len, .. } => start + len,
        }
    }
}

/// How many bytes of an over-long line are kept for the quarantine.
pub(super) const TOO_LONG_HEAD: usize = 4096;

#[derive(Debug)]
pub struct LineSplitter {
    /// Bytes fed and not yet dropped; `buf[consumed..]` is not handed out yet.
    buf: Vec<u8>,
    consumed: usize,
    /// File offset of `buf[0]`.
    base: u64,
    max_line: usize,
    /// The over-long line being skipped, if any.
    skip: Option<Skip>,
    /// Holds the head of the last over-long line handed out.
    head_store: Vec<u8>,
}

#[derive(Debug)]
struct Skip {
    start: u64,
    head: Vec<u8>,
    /// Its newline has been seen: `base` is the offset just past it.
    done: bool,
}

impl LineSplitter {
    /// A splitter whose first byte is at file offset `offset`.
    pub fn new(offset: u64, max_line: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            consumed: 0,
            base: offset,
            max_line: max_line.max(1),
            skip: None,
            head_store: Vec::new(),
        }
    }

    /// Offset just past the last piece handed out: where a reader resumes.
    pub(crate) fn emitted_offset(&self) -> u64 {
        match &self.skip {
            Some(skip) => skip.start,
            None => self.base + self.consumed as u64,
        }
    }

    /// Offset of the next byte this splitter expects to be fed.
    pub(crate) fn fed_offset(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Bytes held for a line whose newline has not arrived yet.
    pub(crate) fn pending(&self) -> u64 {
        self.fed_offset() - self.emitted_offset()
    }

    /// Gives back the memory of bytes already handed out, keeping only a
    /// partial last line: a file with nothing new to read holds no read-sized
    /// buffer, so memory does not grow with the number of files tracked.
    pub(crate) fn release_memory(&mut self) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.base += self.consumed as u64;
            self.consumed = 0;
        }
        if self.buf.capacity() > self.buf.len() {
            self.buf.shrink_to_fit();
        }
        if self.head_store.capacity() > 0 {
            self.head_store = Vec::new();
        }
    }

    /// Appends bytes that were read at `fed_offset()`.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.base += self.consumed as u64;
            self.consumed = 0;
        }
        match &mut self.skip {
            Some(skip) if !skip.done => {
                let (taken, rest) = match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        skip.done = true;
                        (&bytes[..i], &bytes[i + 1..])
                    }
                    None => (bytes, &[][..]),
                };
                let room = TOO_LONG_HEAD.saturating_sub(skip.head.len());
                skip.head.extend_from_slice(&taken[..room.min(taken.len())]);
                self.base += (bytes.len() - rest.len()) as u64;
                self.buf.extend_from_slice(rest);
            }
            _ => self.buf.extend_from_slice(bytes),
        }
    }

    /// The next complete line or over-long line, if one is complete.
    pub fn next_piece(&mut self) -> Option<Piece<'_>> {
        if let Some(skip) = &self.skip {
            if !skip.done {
                return None;
            }
            let skip = self.skip.take()?;
            self.head_store = skip.head;
            return Some(Piece::TooLong {
                start: skip.start,
                len: self.base - skip.start,
                head: &self.head_store,
            });
        }
        let from = self.consumed;
        let start = self.base + from as u64;
        let live = &self.buf[from..];
        match memchr::memchr(b'\n', live) {
            Some(i) if i <= self.max_line => {
                self.consumed += i + 1;
                Some(Piece::Line {
                    start,
                    line: &self.buf[from..from + i],
                })
            }
            Some(i) => {
                self.consumed += i + 1;
                Some(Piece::TooLong {
                    start,
                    len: i as u64 + 1,
                    head: &self.buf[from..from + TOO_LONG_HEAD.min(i)],
                })
            }
            None if live.len() > self.max_line => {
                let head = live[..TOO_LONG_HEAD.min(live.len())].to_vec();
                self.base = start + live.len() as u64;
                self.buf.clear();
                self.consumed = 0;
                self.skip = Some(Skip {
                    start,
                    head,
                    done: false,
                });
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_splitter_holds_only_its_partial_line() {
        let mut s = LineSplitter::new(0, 1 << 20);
        let mut bytes = b"{\"a\":1}\n".repeat(10_000);
        bytes.extend_from_slice(b"{\"partial\"");
        s.feed(&bytes);
        while s.next_piece().is_some() {}
        s.release_memory();
        assert_eq!(s.buf.capacity(), b"{\"partial\"".len());
        assert_eq!(s.emitted_offset(), 80_000);
        s.feed(b":2}\n");
        match s.next_piece() {
            Some(Piece::Line { start, line }) => {
                assert_eq!((start, line), (80_000, &b"{\"partial\":2}"[..]))
            }
            _ => panic!("the partial line completes"),
        }
    }
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Line(u64, Vec<u8>),
        TooLong(u64, u64),
    }

    fn drain(s: &mut LineSplitter, out: &mut Vec<Out>) {
        while let Some(p) = s.next_piece() {
            out.push(match p {
                Piece::Line { start, line } => Out::Line(start, line.to_vec()),
                Piece::TooLong { start, len, .. } => Out::TooLong(start, len),
            });
        }
    }

    /// What a splitter must produce: every `\n`-terminated line, with its
    /// offset, over-long ones marked; the unterminated tail held back.
    fn model(input: &[u8], base: u64, max_line: usize) -> (Vec<Out>, u64) {
        let mut out = Vec::new();
        let mut start = 0usize;
        for (i, b) in input.iter().enumerate() {
            if *b == b'\n' {
                let line = &input[start..i];
                let at = base + start as u64;
                if line.len() > max_line {
                    out.push(Out::TooLong(at, line.len() as u64 + 1));
                } else {
                    out.push(Out::Line(at, line.to_vec()));
                }
                start = i + 1;
            }
        }
        (out, base + start as u64)
    }

    proptest! {
        #[test]
        fn any_read_boundaries_give_the_same_lines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b'), any::<u8>()], 0..600),
            cuts in proptest::collection::vec(1usize..80, 1..40),
            max_line in 1usize..64,
            base in 0u64..1_000_000,
        ) {
            let mut s = LineSplitter::new(base, max_line);
            let mut out = Vec::new();
            let mut at = 0;
            let mut cuts = cuts.into_iter().cycle();
            while at < input.len() {
                let n = cuts.next().unwrap().min(input.len() - at);
                prop_assert_eq!(s.fed_offset(), base + at as u64);
                s.feed(&input[at..at + n]);
                at += n;
                drain(&mut s, &mut out);
            }
            let (want, resume) = model(&input, base, max_line);
            prop_assert_eq!(out, want);
            prop_assert_eq!(s.emitted_offset(), resume);
            prop_assert_eq!(s.pending(), base + input.len() as u64 - resume);
        }
    }

    #[test]
    fn a_partial_last_line_waits_for_its_newline() {
        let mut s = LineSplitter::new(0, 100);
        let mut out = Vec::new();
        s.feed(b"{\"a\":1}\n{\"b\"");
        drain(&mut s, &mut out);
        assert_eq!(out, vec![Out::Line(0, b"{\"a\":1}".to_vec())]);
        assert_eq!(s.emitted_offset(), 8);
        s.feed(b":2}\n");
        drain(&mut s, &mut out);
        assert_eq!(out[1], Out::Line(8, b"{\"b\":2}".to_vec()));
        assert_eq!(s.emitted_offset(), 16);
    }

    #[test]
    fn an_over_long_line_keeps_a_bounded_head() {
        let mut s = LineSplitter::new(10, 8);
        let mut heads = Vec::new();
        for _ in 0..5 {
            s.feed(&[b'x'; 3000]);
            assert!(s.next_piece().is_none());
        }
        s.feed(b"\nok\n");
        while let Some(p) = s.next_piece() {
            match p {
                Piece::TooLong { start, len, head } => heads.push((start, len, head.len())),
                Piece::Line { start, line } => heads.push((start, line.len() as u64, 0)),
            }
        }
        assert_eq!(heads, vec![(10, 15_001, TOO_LONG_HEAD), (15_011, 2, 0)]);
    }
}
