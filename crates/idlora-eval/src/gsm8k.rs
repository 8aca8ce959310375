//! GSM8K answers: the final number of a solution, as evaluation harnesses take it. The gold
//! answer ends with `#### N`; a generation is read the same way when it has that marker, else after
//! "The answer is", else its last number. Numbers are normalised: thousands commas, `$`, a trailing
//! full stop and trailing decimal zeros are dropped (`$1,200.00.` -> `1200`).

/// The numbers in `text`, in order, normalised. A number is an optional `-`, digits (commas
/// allowed before groups of three digits) and an optional decimal part.
pub fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let neg = i > 0 && chars[i - 1] == '-' && (i < 2 || !chars[i - 2].is_ascii_alphanumeric());
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            while i < chars.len() {
                let ch = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
                if ch.is_ascii_digit() {
                    s.push(ch);
                } else if ch == ',' && thousands_group(&chars, i + 1) {
                    // a thousands separator: exactly three digits follow
                } else if ch == '.' && next_digit && !s.contains('.') {
                    s.push('.');
                } else {
                    break;
                }
                i += 1;
            }
            out.push(normalise(&s));
        } else {
            i += 1;
        }
    }
    out
}

fn thousands_group(chars: &[char], at: usize) -> bool {
    (at..at + 3).all(|j| chars.get(j).is_some_and(|c| c.is_ascii_digit()))
        && !chars.get(at + 3).is_some_and(|c| c.is_ascii_digit())
}

/// `-012.50` -> `-12.5`, `7.000` -> `7`, `-0` -> `0`.
pub fn normalise(number: &str) -> String {
    let (neg, body) = match number.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, number),
    };
    let body: String = body.chars().filter(|c| *c != ',' && *c != '$').collect();
    let (int, frac) = body.split_once('.').unwrap_or((&body, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let mut s = if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
    if neg && s != "0" {
        s.insert(0, '-');
    }
    s
}

/// The final answer of a GSM8K solution or generation, normalised; `None` without any number.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(pos) = text.rfind("####")
        && let Some(n) = numbers(&text[pos + 4..]).into_iter().next()
    {
        return Some(n);
    }
    // ASCII lowering keeps byte offsets, so `pos` indexes `text` too.
    let lower = text.to_ascii_lowercase();
    if let Some(pos) = lower.rfind("the answer is")
        && let Some(n) = numbers(&text[pos..]).into_iter().next()
    {
        return Some(n);
    }
    numbers(text).pop()
}

/// Whether `generation`'s answer equals `gold`'s (both read with [`extract_answer`]).
pub fn is_correct(generation: &str, gold: &str) -> bool {
    match (extract_answer(generation), extract_answer(gold)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricky_strings() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(extract_answer("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18"), some("18"));
        assert_eq!(extract_answer("#### 1,200"), some("1200"));
        assert_eq!(extract_answer("She has $1,200.00."), some("1200"));
        assert_eq!(extract_answer("The answer is 42 apples, not 7."), some("42"));
        assert_eq!(extract_answer("It drops to -5 degrees."), some("-5"));
        assert_eq!(extract_answer("Pages 3-4 are missing, 12 remain"), some("12"));
        assert_eq!(extract_answer("model-3 costs 0.50 dollars"), some("0.5"));
        assert_eq!(extract_answer("about 7.25% of it"), some("7.25"));
        assert_eq!(extract_answer("It ends here. 1.5."), some("1.5"));
        assert_eq!(extract_answer("no numbers at all"), None);
        assert_eq!(extract_answer("#### \n then 3"), some("3"));
        assert_eq!(numbers("a 1,234,567 b 1,2 c 007 d 1.2.3"), ["1234567", "1", "2", "7", "1.2", "3"]);
        assert!(is_correct("so the total is 18.", "... #### 18"));
        assert!(!is_correct("so the total is 17.", "... #### 18"));
        assert!(!is_correct("I don't know", "#### 18"));
        assert_eq!(normalise("-0.000"), "0");
        assert_eq!(extract_answer("ÉTÉ: THE ANSWER IS 9 — ok 10"), some("9"));
    }
}
