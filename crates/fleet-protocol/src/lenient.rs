//! Integers as agents write them: `7` or `7.0` (Python's `float`, a
//! JavaScript number), never `7.5`. For `#[serde(deserialize_with)]`.

use serde::de::{Deserializer, Error};
use serde::Deserialize;

fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Number::deserialize(d)?;
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        _ => Err(D::Error::custom(format!(
            "expected a whole number, got {v}"
        ))),
    }
}

fn narrow<T: TryFrom<u64>, E: Error>(n: u64) -> Result<T, E> {
    T::try_from(n).map_err(|_| E::custom(format!("{n} is out of range")))
}

pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(integral(d)?)
}

pub fn opt_u8<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    Option::<Whole>::deserialize(d)?
        .map(|w| narrow(w.0))
        .transpose()
}

pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<Whole>::deserialize(d)?
        .map(|w| narrow(w.0))
        .transpose()
}

pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

/// A whole number, written as an integer or an integral float.
struct Whole(u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integral(d).map(Whole)
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_u8")]
        p: Option<u8>,
        #[serde(deserialize_with = "super::u32")]
        n: u32,
    }

    #[test]
    fn integral_floats_pass_and_fractions_do_not() {
        let t: T = serde_json::from_str(r#"{"p": 7.0, "n": 3}"#).unwrap();
        assert_eq!((t.p, t.n), (Some(7), 3));
        let t: T = serde_json::from_str(r#"{"n": 2.0}"#).unwrap();
        assert_eq!((t.p, t.n), (None, 2));
        assert!(serde_json::from_str::<T>(r#"{"n": 2.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"p": 300, "n": 1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n": -1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n": "1"}"#).is_err());
    }
}
