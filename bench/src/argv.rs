//! The command-line reading `coldstart` and `loadgen` share: `--name value` pairs in any order,
//! anything left over is an error.

pub struct Argv(Vec<String>);

impl Argv {
    pub fn from_env() -> Self {
        Self(std::env::args().skip(1).collect())
    }

    /// The value after `name`, taken out of the list.
    pub fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        let Some(i) = self.0.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.0.len() {
            return Err(format!("{name} needs a value"));
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Ok(Some(v))
    }

    /// A whole number from 1 to `max`, or `default` when absent.
    pub fn number(&mut self, name: &str, default: usize, max: usize) -> Result<usize, String> {
        Ok(self.optional_number(name, max)?.unwrap_or(default))
    }

    /// A whole number from 1 to `max`, or `None` when absent.
    pub fn optional_number(&mut self, name: &str, max: usize) -> Result<Option<usize>, String> {
        match self.value(name)? {
            None => Ok(None),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .map(Some)
                .ok_or(if max == usize::MAX {
                    format!("{name} must be a positive whole number, not {v:?}")
                } else {
                    format!("{name} must be a whole number from 1 to {max}, not {v:?}")
                }),
        }
    }

    /// Fails on the first argument nobody took.
    pub fn finish(self) -> Result<(), String> {
        match self.0.first() {
            Some(extra) => Err(format!("unexpected argument {extra:?}")),
            None => Ok(()),
        }
    }
}
