// A chat flow's sessions need a store: it is an argument, not something found missing on the
// first turn.
use crewflow::prelude::*;

fn main() {
    let flow = FlowBuilder::<ChatState>::new("echo")
        .start("answer", |_cx, message: String| async move { Ok(message) })
        .build()
        .unwrap();
    let _chat = ChatFlow::new(flow);
}
