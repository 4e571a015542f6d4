//! Token ids to streamed text: whole characters only, and never past a stop sequence.

/// Turns generated token ids into text pieces as they arrive.
///
/// A character can span tokens (an emoji is several byte-level tokens), so text is only
/// released once it decodes without a replacement character. Text that could be the start of
/// a stop sequence is held back until it is clearly not one.
pub(crate) struct TextStream {
    tokens: Vec<u32>,
    /// The last released token, decoded again as context (some decoders drop a leading
    /// space when a token is decoded alone).
    context_from: usize,
    /// Tokens before this index have been released as text.
    released_upto: usize,
    /// Text decoded but not yet released (it may begin a stop sequence).
    held: String,
    stops: Vec<String>,
}

/// What a new token produced.
#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    /// Text to release (possibly empty).
    Text(String),
    /// A stop sequence was reached; this is the text before it.
    Stop(String),
}

impl TextStream {
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            tokens: Vec::new(),
            context_from: 0,
            released_upto: 0,
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Adds a token; `decode` turns ids into text.
    pub fn push(&mut self, token: u32, decode: impl Fn(&[u32]) -> String) -> Piece {
        self.tokens.push(token);
        let prefix = decode(&self.tokens[self.context_from..self.released_upto]);
        let whole = decode(&self.tokens[self.context_from..]);
        // An incomplete character decodes to U+FFFD: wait for the rest of its bytes.
        if whole.ends_with('\u{FFFD}') || !whole.starts_with(&prefix) {
            return Piece::Text(String::new());
        }
        self.held.push_str(&whole[prefix.len()..]);
        self.context_from = self.released_upto;
        self.released_upto = self.tokens.len();
        self.release()
    }

    /// The text still held back when generation ends.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn release(&mut self) -> Piece {
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Piece::Stop(text);
        }
        // Keep the longest tail that is a prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(move |&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Piece::Text(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy decoder: each id is one byte; 200 and 201 together make "é".
    fn decode(ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .map(|&i| {
                if i == 200 {
                    0xC3
                } else if i == 201 {
                    0xA9
                } else {
                    i as u8
                }
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn run(stream: &mut TextStream, text: &[u32]) -> (String, bool) {
        let mut out = String::new();
        for &t in text {
            match stream.push(t, decode) {
                Piece::Text(s) => out.push_str(&s),
                Piece::Stop(s) => {
                    out.push_str(&s);
                    return (out, true);
                }
            }
        }
        out.push_str(&stream.finish());
        (out, false)
    }

    fn ids(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn split_characters_are_released_whole() {
        let mut s = TextStream::new(&[]);
        assert_eq!(s.push(u32::from(b'a'), decode), Piece::Text("a".into()));
        assert_eq!(s.push(200, decode), Piece::Text(String::new()));
        assert_eq!(s.push(201, decode), Piece::Text("é".into()));
    }

    #[test]
    fn text_stops_before_a_stop_sequence_and_never_shows_it() {
        let mut s = TextStream::new(&["END".to_string()]);
        let (text, stopped) = run(&mut s, &ids("hello ENthusiast END more"));
        assert_eq!((text.as_str(), stopped), ("hello ENthusiast ", true));
    }

    #[test]
    fn a_held_prefix_is_released_when_generation_ends() {
        let mut s = TextStream::new(&["END".to_string()]);
        assert_eq!(run(&mut s, &ids("the EN")), ("the EN".to_string(), false));
    }
}
