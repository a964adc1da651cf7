//! Bounded log and message text: an error can carry a whole list response (every object
//! in the cluster) or a hostile value, and one line must not.

/// Longest error text in one log line.
pub const MAX_LOGGED: usize = 500;

/// `text` cut to at most `max` characters, marked with its full length when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_text_and_says_how_long_it_was() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(5000);
        let cut = bounded(&long, 100);
        assert!(
            cut.chars().count() < 130 && cut.ends_with("(10000 bytes)"),
            "{cut}"
        );
    }
}
