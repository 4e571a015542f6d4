use crewflow::prelude::*;

struct Arity;

#[flow]
impl Arity {
    #[start]
    async fn begin(&self) -> Result<String> {
        Ok(String::new())
    }

    #[listen(begin)]
    async fn next(&self, text: String, extra: u32) -> Result<()> {
        let _ = (text, extra);
        Ok(())
    }
}

fn main() {}
