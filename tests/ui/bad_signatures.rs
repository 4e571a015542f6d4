use crewflow::prelude::*;

struct Shapes;

#[flow]
impl Shapes {
    #[start]
    async fn by_value(self) -> Result<()> {
        Ok(())
    }

    #[listen(by_value)]
    async fn cx_by_value(&self, cx: Cx<()>) -> Result<()> {
        let _ = cx;
        Ok(())
    }

    #[listen(by_value)]
    async fn no_result(&self) {}

    #[listen(by_value)]
    #[router(by_value)]
    async fn both(&self) -> Result<String> {
        Ok(String::new())
    }
}

fn main() {}
