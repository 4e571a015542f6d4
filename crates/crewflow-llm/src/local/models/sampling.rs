//! Picking the next token from the logits: the most likely one (greedy, the default), or a
//! seeded draw at a temperature, optionally from the top-p nucleus.

use candle_core::{D, DType, Error, Result, Tensor};
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;

enum Sampling {
    ArgMax,
    All { temperature: f64 },
    TopP { p: f64, temperature: f64 },
}

/// A token sampler; seeded, so a request with a seed gives the same reply every time.
pub(crate) struct Sampler {
    rng: StdRng,
    sampling: Sampling,
}

impl Sampler {
    /// Greedy without a temperature (or with one under 1e-7).
    pub(crate) fn new(seed: u64, temperature: Option<f64>, top_p: Option<f64>) -> Self {
        let sampling = match temperature.filter(|t| t.partial_cmp(&1e-7) != Some(std::cmp::Ordering::Less)) {
            None => Sampling::ArgMax,
            Some(temperature) => match top_p {
                None => Sampling::All { temperature },
                Some(p) => Sampling::TopP { p, temperature },
            },
        };
        Sampler { rng: StdRng::seed_from_u64(seed), sampling }
    }

    /// The next token.
    pub(crate) fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits = logits.to_dtype(DType::F32)?;
        let probabilities = |temperature: f64| -> Result<Vec<f32>> {
            candle_nn::ops::softmax_last_dim(&(&logits / temperature)?)?.to_vec1()
        };
        match self.sampling {
            Sampling::ArgMax => logits.argmax(D::Minus1)?.to_scalar::<u32>(),
            Sampling::All { temperature } => self.draw(&probabilities(temperature)?),
            Sampling::TopP { p, temperature } => {
                let mut probabilities = probabilities(temperature)?;
                if p <= 0.0 || p >= 1.0 {
                    return self.draw(&probabilities);
                }
                // The smallest set of tokens whose probabilities reach p; the rest get none.
                let mut order: Vec<usize> = (0..probabilities.len()).collect();
                order.sort_by(|&i, &j| probabilities[j].total_cmp(&probabilities[i]));
                let mut sum = 0.0;
                for index in order {
                    if sum >= p as f32 {
                        probabilities[index] = 0.0;
                    } else {
                        sum += probabilities[index];
                    }
                }
                self.draw(&probabilities)
            }
        }
    }

    fn draw(&mut self, probabilities: &[f32]) -> Result<u32> {
        let distribution = WeightedIndex::new(probabilities).map_err(Error::wrap)?;
        Ok(distribution.sample(&mut self.rng) as u32)
    }
}
