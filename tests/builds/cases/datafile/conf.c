int threshold = 10;
const char *const greeting = "hi";
