//! Kubernetes resource quantities ("100m", "1.5", "64Mi", "1e3", "2G") as exact rationals, so
//! CPU becomes milli-cores and memory bytes without floating-point drift. Rounding is up, as
//! the API server rounds a quantity to the precision it is read at.

/// A parsed quantity: `num / den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    num: i128,
    den: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {text:?}: {reason}")]
pub struct QuantityError {
    pub text: String,
    pub reason: &'static str,
}

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let err = |reason| QuantityError { text: text.to_string(), reason };
        let s = text.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, suffix) = s.split_at(digits_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err("expected a number"));
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let mut num: i128 = 0;
        for c in int_part.chars().chain(frac_part.chars()) {
            num = num
                .checked_mul(10)
                .and_then(|n| n.checked_add(i128::from(c as u8 - b'0')))
                .ok_or_else(|| err("too large"))?;
        }
        let mut pow10: i32 = -(frac_part.len() as i32);
        let mut pow2: u32 = 0;
        match suffix {
            "" => {}
            "n" => pow10 -= 9,
            "u" => pow10 -= 6,
            "m" => pow10 -= 3,
            "k" => pow10 += 3,
            "M" => pow10 += 6,
            "G" => pow10 += 9,
            "T" => pow10 += 12,
            "P" => pow10 += 15,
            "E" => pow10 += 18,
            "Ki" => pow2 = 10,
            "Mi" => pow2 = 20,
            "Gi" => pow2 = 30,
            "Ti" => pow2 = 40,
            "Pi" => pow2 = 50,
            "Ei" => pow2 = 60,
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().map_err(|_| err("bad exponent"))?;
                if exp.abs() > 30 {
                    return Err(err("exponent out of range"));
                }
                pow10 += exp;
            }
            _ => return Err(err("unknown suffix")),
        }
        num = num.checked_mul(1i128 << pow2).ok_or_else(|| err("too large"))?;
        let mut den: i128 = 1;
        if pow10 >= 0 {
            num = num
                .checked_mul(10i128.checked_pow(pow10 as u32).ok_or_else(|| err("too large"))?)
                .ok_or_else(|| err("too large"))?;
        } else {
            den = 10i128.checked_pow((-pow10) as u32).ok_or_else(|| err("too small"))?;
        }
        Ok(Quantity { num: if negative { -num } else { num }, den })
    }

    fn ceil_scaled(&self, scale: i128) -> i64 {
        let n = self.num * scale;
        let q = n.div_euclid(self.den) + i128::from(n.rem_euclid(self.den) != 0);
        q.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// In thousandths (CPU milli-cores), rounded up.
    pub fn millis(&self) -> i64 {
        self.ceil_scaled(1000)
    }

    /// In whole units (bytes), rounded up.
    pub fn units(&self) -> i64 {
        self.ceil_scaled(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_forms() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("100m").millis(), 100);
        assert_eq!(q("1").millis(), 1000);
        assert_eq!(q("0.5").millis(), 500);
        assert_eq!(q("1.5").millis(), 1500);
        assert_eq!(q("0.0001").millis(), 1, "rounded up");
        assert_eq!(q("64Mi").units(), 64 << 20);
        assert_eq!(q("1Gi").units(), 1 << 30);
        assert_eq!(q("2G").units(), 2_000_000_000);
        assert_eq!(q("128974848").units(), 128_974_848);
        assert_eq!(q("129e6").units(), 129_000_000);
        assert_eq!(q("123Mi").units(), 123 * 1024 * 1024);
        assert_eq!(q("1.5Ki").units(), 1536);
        assert_eq!(q("500u").millis(), 1);
        assert_eq!(q("-1").units(), -1);
    }

    #[test]
    fn bad_quantities_name_themselves() {
        for bad in ["", "abc", "1..2", "1Zi", "1e", "12.3.4", "1e99"] {
            let e = Quantity::parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
        }
    }
}
