//! Counted nouns in messages: "1 volume", "2 volumes", never "1 volumes".

/// "1 volume", "2 volumes": `noun` is the singular and takes an "s" in the plural.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_singular_only_for_one() {
        assert_eq!(count(0, "volume"), "0 volumes");
        assert_eq!(count(1, "volume"), "1 volume");
        assert_eq!(count(2, "action"), "2 actions");
    }
}
