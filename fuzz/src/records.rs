//! One fuzz input as a sequence of records: `kind: u8, length: u16 big-endian, body`.
//!
//! A body shorter than its length (the input ended) is taken as it is, so every byte string is
//! a valid input and mutations that change a length keep the records after it meaningful.
//! The seed generator (`examples/seeds.rs`) writes records with [`encode`].

/// Iterates over the records of one input.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, rest) = self.rest.split_first()?;
        let len = match rest {
            [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
            [only] => usize::from(*only),
            [] => 0,
        };
        let rest = rest.get(2..).unwrap_or(&[]);
        let len = len.min(rest.len());
        let (body, rest) = rest.split_at(len);
        self.rest = rest;
        Some((kind, body))
    }
}

/// Appends one record to `out`. Bodies longer than 65535 bytes are cut.
pub fn encode(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let body = &body[..body.len().min(usize::from(u16::MAX))];
    out.push(kind);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads integers from the front of a byte slice, giving zeros once it is exhausted.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// The next `len` bytes (fewer when the input ends).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut input = Vec::new();
        encode(&mut input, 1, b"abc");
        encode(&mut input, 2, b"");
        encode(&mut input, 3, b"xyz");
        input.truncate(input.len() - 1);
        let records: Vec<_> = Records::new(&input).collect();
        assert_eq!(records, [(1, &b"abc"[..]), (2, &b""[..]), (3, &b"xy"[..])]);
    }
}
