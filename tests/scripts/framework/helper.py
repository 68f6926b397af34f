GREETING = "hello from the source dir"
