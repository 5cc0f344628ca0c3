//! Stop strings: generation ends when the text contains one of them, wherever the token
//! boundaries fall, and the stop string itself is never emitted.
//!
//! The text arrives in chunks (one per token, as [`crate::tokenizer::TextStream`] releases
//! it). A chunk is emitted at once except for its longest tail that could still begin a stop
//! string: that tail is held until the next chunk settles it.

/// Watches a stream of text for stop strings.
#[derive(Debug, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet emitted: a possible start of a stop string.
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// A watcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next chunk of text; returns what can be emitted now. After a stop string,
    /// that is the text before it, and everything later is dropped.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(chunk);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self.open_tail();
        let emit_to = self.held.len() - keep;
        let rest = self.held.split_off(emit_to);
        std::mem::replace(&mut self.held, rest)
    }

    /// The text still held at the end of generation (no stop string came).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The length in bytes of the longest tail of the held text that is a proper prefix of a
    /// stop string (on a character boundary).
    fn open_tail(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| &held[i..])
            .find(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut watcher = StopStrings::new(&stops);
        let mut out = String::new();
        for chunk in chunks {
            out.push_str(&watcher.push(chunk));
        }
        out.push_str(&watcher.finish());
        (out, watcher.stopped())
    }

    #[test]
    fn a_stop_string_across_chunks_ends_the_text_before_it() {
        assert_eq!(
            run(
                &["The end"],
                &["Once upon", " a time. The", " en", "d. More"]
            ),
            ("Once upon a time. ".to_string(), true)
        );
        // The earliest of several, even when another completes in the same chunk.
        assert_eq!(
            run(&["cat", "a c"], &["I saw a", " cat"]),
            ("I saw ".to_string(), true)
        );
        // Within one chunk.
        assert_eq!(run(&["\n"], &["one\ntwo"]), ("one".to_string(), true));
    }

    #[test]
    fn a_possible_start_is_held_then_released() {
        let stops = vec!["STOP".to_string()];
        let mut w = StopStrings::new(&stops);
        assert_eq!(w.push("go ST"), "go ");
        assert_eq!(w.push("AR"), "STAR");
        assert_eq!(w.push("S"), "");
        assert_eq!(w.finish(), "S");
        assert!(!w.stopped());
        // No stops: everything passes at once.
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
        assert_eq!(run(&[""], &["a"]), ("a".to_string(), false));
        // Multi-byte characters are never split.
        assert_eq!(run(&["éé"], &["café", "!"]), ("café!".to_string(), false));
    }
}
