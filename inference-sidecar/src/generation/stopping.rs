//! Stop sequences over streamed text. Text that could be the start of a stop sequence is held back
//! until it is known not to be one, so a client never receives part of a stop sequence.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCheck {
    /// Text safe to send now (may be empty).
    Continue(String),
    /// A stop sequence matched: the text before it, then the generation ends.
    Stopped(String),
}

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text not yet sent.
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopCheck {
        self.pending.push_str(delta);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return StopCheck::Stopped(text);
        }
        // Hold back the longest tail that is a prefix of some stop sequence.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| {
                        self.pending.is_char_boundary(self.pending.len() - n)
                            && s.is_char_boundary(n)
                            && self.pending.ends_with(&s[..n])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopCheck::Continue(text)
    }

    /// What is still held back, when the generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_stop_and_cuts_at_a_real_one() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Paris"), StopCheck::Continue("Paris".into()));
        assert_eq!(m.push(".\n"), StopCheck::Continue(".".into()));
        assert_eq!(m.push("\nUs"), StopCheck::Continue(String::new()));
        assert_eq!(m.push("er: hi"), StopCheck::Stopped(String::new()));
    }

    #[test]
    fn releases_text_that_turned_out_not_to_stop() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("the E"), StopCheck::Continue("the ".into()));
        assert_eq!(m.push("Nd"), StopCheck::Continue("ENd".into()));
        assert_eq!(m.push("xEN"), StopCheck::Continue("x".into()));
        assert_eq!(m.flush(), "EN");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["c".into(), "ab".into()]);
        assert_eq!(m.push("xxabc"), StopCheck::Stopped("xx".into()));
        let mut none = StopMatcher::new(vec![String::new()]);
        assert_eq!(none.push("abc"), StopCheck::Continue("abc".into()));
    }

    #[test]
    fn multibyte_text_is_not_split() {
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("caf"), StopCheck::Continue("caf".into()));
        assert_eq!(m.push("é"), StopCheck::Continue(String::new()));
        assert_eq!(m.push("?"), StopCheck::Continue("é?".into()));
    }
}
