"""One LightningModule per method; the file name equals its ``spt/conf/method`` name."""
