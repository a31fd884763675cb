//! Unit tests: the streaming decoder, the ring transport (wrap-around,
//! hostile indices) and the client over a scripted server.

extern crate std;

mod client;
mod ring;
mod wire;
