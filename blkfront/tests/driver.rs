//! The driver against an in-process backend on the fake platform.

mod common;

use blkfront::DeviceEvent;
use common::backend::BackConfig;
use common::*;

#[test]
fn connects_and_moves_data() {
    let w = World::new(8192);
    let mut xs = w.front_xs();
    let mut dev = w.device(w.config());
    let mut back = Some(w.backend(BackConfig::default()));
    let events = connect(&mut dev, &mut xs, &mut back);
    assert!(matches!(events.last(), Some(DeviceEvent::Connected { .. })), "{events:?}");
    let spans = pool_spans(&dev, 0, 4, 64, 7);
    let tag = dev.write(0, 64, spans).unwrap();
    let mut done = None;
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        done = d.next_completion();
        done.is_some()
    });
    let c = done.unwrap();
    assert_eq!(c.tag, tag);
    assert_eq!(c.result, Ok(()));
}
