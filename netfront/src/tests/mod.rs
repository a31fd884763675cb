mod abi;
mod csum;
mod driver;
mod features;
mod rx;
#[cfg(feature = "smoltcp")]
mod smol;
mod tx;
