mod abi;
mod csum;
mod driver;
mod features;
mod rx;
mod tx;
