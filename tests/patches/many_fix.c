/* Replaces all 100 functions of many.c: new = old + 1000. */
#include <armlp/livepatch.h>
ARMLP_PATCH("many");
int f0_v2(int x) { return x * (0 + 3) + 0 + 1000; }
ARMLP_REPLACE(f0, f0_v2);
int f1_v2(int x) { return x * (1 + 3) + 1 + 1000; }
ARMLP_REPLACE(f1, f1_v2);
int f2_v2(int x) { return x * (2 + 3) + 2 + 1000; }
ARMLP_REPLACE(f2, f2_v2);
int f3_v2(int x) { return x * (3 + 3) + 3 + 1000; }
ARMLP_REPLACE(f3, f3_v2);
int f4_v2(int x) { return x * (4 + 3) + 4 + 1000; }
ARMLP_REPLACE(f4, f4_v2);
int f5_v2(int x) { return x * (5 + 3) + 5 + 1000; }
ARMLP_REPLACE(f5, f5_v2);
int f6_v2(int x) { return x * (6 + 3) + 6 + 1000; }
ARMLP_REPLACE(f6, f6_v2);
int f7_v2(int x) { return x * (7 + 3) + 7 + 1000; }
ARMLP_REPLACE(f7, f7_v2);
int f8_v2(int x) { return x * (8 + 3) + 8 + 1000; }
ARMLP_REPLACE(f8, f8_v2);
int f9_v2(int x) { return x * (9 + 3) + 9 + 1000; }
ARMLP_REPLACE(f9, f9_v2);
int f10_v2(int x) { return x * (10 + 3) + 10 + 1000; }
ARMLP_REPLACE(f10, f10_v2);
int f11_v2(int x) { return x * (11 + 3) + 11 + 1000; }
ARMLP_REPLACE(f11, f11_v2);
int f12_v2(int x) { return x * (12 + 3) + 12 + 1000; }
ARMLP_REPLACE(f12, f12_v2);
int f13_v2(int x) { return x * (13 + 3) + 13 + 1000; }
ARMLP_REPLACE(f13, f13_v2);
int f14_v2(int x) { return x * (14 + 3) + 14 + 1000; }
ARMLP_REPLACE(f14, f14_v2);
int f15_v2(int x) { return x * (15 + 3) + 15 + 1000; }
ARMLP_REPLACE(f15, f15_v2);
int f16_v2(int x) { return x * (16 + 3) + 16 + 1000; }
ARMLP_REPLACE(f16, f16_v2);
int f17_v2(int x) { return x * (17 + 3) + 17 + 1000; }
ARMLP_REPLACE(f17, f17_v2);
int f18_v2(int x) { return x * (18 + 3) + 18 + 1000; }
ARMLP_REPLACE(f18, f18_v2);
int f19_v2(int x) { return x * (19 + 3) + 19 + 1000; }
ARMLP_REPLACE(f19, f19_v2);
int f20_v2(int x) { return x * (20 + 3) + 20 + 1000; }
ARMLP_REPLACE(f20, f20_v2);
int f21_v2(int x) { return x * (21 + 3) + 21 + 1000; }
ARMLP_REPLACE(f21, f21_v2);
int f22_v2(int x) { return x * (22 + 3) + 22 + 1000; }
ARMLP_REPLACE(f22, f22_v2);
int f23_v2(int x) { return x * (23 + 3) + 23 + 1000; }
ARMLP_REPLACE(f23, f23_v2);
int f24_v2(int x) { return x * (24 + 3) + 24 + 1000; }
ARMLP_REPLACE(f24, f24_v2);
int f25_v2(int x) { return x * (25 + 3) + 25 + 1000; }
ARMLP_REPLACE(f25, f25_v2);
int f26_v2(int x) { return x * (26 + 3) + 26 + 1000; }
ARMLP_REPLACE(f26, f26_v2);
int f27_v2(int x) { return x * (27 + 3) + 27 + 1000; }
ARMLP_REPLACE(f27, f27_v2);
int f28_v2(int x) { return x * (28 + 3) + 28 + 1000; }
ARMLP_REPLACE(f28, f28_v2);
int f29_v2(int x) { return x * (29 + 3) + 29 + 1000; }
ARMLP_REPLACE(f29, f29_v2);
int f30_v2(int x) { return x * (30 + 3) + 30 + 1000; }
ARMLP_REPLACE(f30, f30_v2);
int f31_v2(int x) { return x * (31 + 3) + 31 + 1000; }
ARMLP_REPLACE(f31, f31_v2);
int f32_v2(int x) { return x * (32 + 3) + 32 + 1000; }
ARMLP_REPLACE(f32, f32_v2);
int f33_v2(int x) { return x * (33 + 3) + 33 + 1000; }
ARMLP_REPLACE(f33, f33_v2);
int f34_v2(int x) { return x * (34 + 3) + 34 + 1000; }
ARMLP_REPLACE(f34, f34_v2);
int f35_v2(int x) { return x * (35 + 3) + 35 + 1000; }
ARMLP_REPLACE(f35, f35_v2);
int f36_v2(int x) { return x * (36 + 3) + 36 + 1000; }
ARMLP_REPLACE(f36, f36_v2);
int f37_v2(int x) { return x * (37 + 3) + 37 + 1000; }
ARMLP_REPLACE(f37, f37_v2);
int f38_v2(int x) { return x * (38 + 3) + 38 + 1000; }
ARMLP_REPLACE(f38, f38_v2);
int f39_v2(int x) { return x * (39 + 3) + 39 + 1000; }
ARMLP_REPLACE(f39, f39_v2);
int f40_v2(int x) { return x * (40 + 3) + 40 + 1000; }
ARMLP_REPLACE(f40, f40_v2);
int f41_v2(int x) { return x * (41 + 3) + 41 + 1000; }
ARMLP_REPLACE(f41, f41_v2);
int f42_v2(int x) { return x * (42 + 3) + 42 + 1000; }
ARMLP_REPLACE(f42, f42_v2);
int f43_v2(int x) { return x * (43 + 3) + 43 + 1000; }
ARMLP_REPLACE(f43, f43_v2);
int f44_v2(int x) { return x * (44 + 3) + 44 + 1000; }
ARMLP_REPLACE(f44, f44_v2);
int f45_v2(int x) { return x * (45 + 3) + 45 + 1000; }
ARMLP_REPLACE(f45, f45_v2);
int f46_v2(int x) { return x * (46 + 3) + 46 + 1000; }
ARMLP_REPLACE(f46, f46_v2);
int f47_v2(int x) { return x * (47 + 3) + 47 + 1000; }
ARMLP_REPLACE(f47, f47_v2);
int f48_v2(int x) { return x * (48 + 3) + 48 + 1000; }
ARMLP_REPLACE(f48, f48_v2);
int f49_v2(int x) { return x * (49 + 3) + 49 + 1000; }
ARMLP_REPLACE(f49, f49_v2);
int f50_v2(int x) { return x * (50 + 3) + 50 + 1000; }
ARMLP_REPLACE(f50, f50_v2);
int f51_v2(int x) { return x * (51 + 3) + 51 + 1000; }
ARMLP_REPLACE(f51, f51_v2);
int f52_v2(int x) { return x * (52 + 3) + 52 + 1000; }
ARMLP_REPLACE(f52, f52_v2);
int f53_v2(int x) { return x * (53 + 3) + 53 + 1000; }
ARMLP_REPLACE(f53, f53_v2);
int f54_v2(int x) { return x * (54 + 3) + 54 + 1000; }
ARMLP_REPLACE(f54, f54_v2);
int f55_v2(int x) { return x * (55 + 3) + 55 + 1000; }
ARMLP_REPLACE(f55, f55_v2);
int f56_v2(int x) { return x * (56 + 3) + 56 + 1000; }
ARMLP_REPLACE(f56, f56_v2);
int f57_v2(int x) { return x * (57 + 3) + 57 + 1000; }
ARMLP_REPLACE(f57, f57_v2);
int f58_v2(int x) { return x * (58 + 3) + 58 + 1000; }
ARMLP_REPLACE(f58, f58_v2);
int f59_v2(int x) { return x * (59 + 3) + 59 + 1000; }
ARMLP_REPLACE(f59, f59_v2);
int f60_v2(int x) { return x * (60 + 3) + 60 + 1000; }
ARMLP_REPLACE(f60, f60_v2);
int f61_v2(int x) { return x * (61 + 3) + 61 + 1000; }
ARMLP_REPLACE(f61, f61_v2);
int f62_v2(int x) { return x * (62 + 3) + 62 + 1000; }
ARMLP_REPLACE(f62, f62_v2);
int f63_v2(int x) { return x * (63 + 3) + 63 + 1000; }
ARMLP_REPLACE(f63, f63_v2);
int f64_v2(int x) { return x * (64 + 3) + 64 + 1000; }
ARMLP_REPLACE(f64, f64_v2);
int f65_v2(int x) { return x * (65 + 3) + 65 + 1000; }
ARMLP_REPLACE(f65, f65_v2);
int f66_v2(int x) { return x * (66 + 3) + 66 + 1000; }
ARMLP_REPLACE(f66, f66_v2);
int f67_v2(int x) { return x * (67 + 3) + 67 + 1000; }
ARMLP_REPLACE(f67, f67_v2);
int f68_v2(int x) { return x * (68 + 3) + 68 + 1000; }
ARMLP_REPLACE(f68, f68_v2);
int f69_v2(int x) { return x * (69 + 3) + 69 + 1000; }
ARMLP_REPLACE(f69, f69_v2);
int f70_v2(int x) { return x * (70 + 3) + 70 + 1000; }
ARMLP_REPLACE(f70, f70_v2);
int f71_v2(int x) { return x * (71 + 3) + 71 + 1000; }
ARMLP_REPLACE(f71, f71_v2);
int f72_v2(int x) { return x * (72 + 3) + 72 + 1000; }
ARMLP_REPLACE(f72, f72_v2);
int f73_v2(int x) { return x * (73 + 3) + 73 + 1000; }
ARMLP_REPLACE(f73, f73_v2);
int f74_v2(int x) { return x * (74 + 3) + 74 + 1000; }
ARMLP_REPLACE(f74, f74_v2);
int f75_v2(int x) { return x * (75 + 3) + 75 + 1000; }
ARMLP_REPLACE(f75, f75_v2);
int f76_v2(int x) { return x * (76 + 3) + 76 + 1000; }
ARMLP_REPLACE(f76, f76_v2);
int f77_v2(int x) { return x * (77 + 3) + 77 + 1000; }
ARMLP_REPLACE(f77, f77_v2);
int f78_v2(int x) { return x * (78 + 3) + 78 + 1000; }
ARMLP_REPLACE(f78, f78_v2);
int f79_v2(int x) { return x * (79 + 3) + 79 + 1000; }
ARMLP_REPLACE(f79, f79_v2);
int f80_v2(int x) { return x * (80 + 3) + 80 + 1000; }
ARMLP_REPLACE(f80, f80_v2);
int f81_v2(int x) { return x * (81 + 3) + 81 + 1000; }
ARMLP_REPLACE(f81, f81_v2);
int f82_v2(int x) { return x * (82 + 3) + 82 + 1000; }
ARMLP_REPLACE(f82, f82_v2);
int f83_v2(int x) { return x * (83 + 3) + 83 + 1000; }
ARMLP_REPLACE(f83, f83_v2);
int f84_v2(int x) { return x * (84 + 3) + 84 + 1000; }
ARMLP_REPLACE(f84, f84_v2);
int f85_v2(int x) { return x * (85 + 3) + 85 + 1000; }
ARMLP_REPLACE(f85, f85_v2);
int f86_v2(int x) { return x * (86 + 3) + 86 + 1000; }
ARMLP_REPLACE(f86, f86_v2);
int f87_v2(int x) { return x * (87 + 3) + 87 + 1000; }
ARMLP_REPLACE(f87, f87_v2);
int f88_v2(int x) { return x * (88 + 3) + 88 + 1000; }
ARMLP_REPLACE(f88, f88_v2);
int f89_v2(int x) { return x * (89 + 3) + 89 + 1000; }
ARMLP_REPLACE(f89, f89_v2);
int f90_v2(int x) { return x * (90 + 3) + 90 + 1000; }
ARMLP_REPLACE(f90, f90_v2);
int f91_v2(int x) { return x * (91 + 3) + 91 + 1000; }
ARMLP_REPLACE(f91, f91_v2);
int f92_v2(int x) { return x * (92 + 3) + 92 + 1000; }
ARMLP_REPLACE(f92, f92_v2);
int f93_v2(int x) { return x * (93 + 3) + 93 + 1000; }
ARMLP_REPLACE(f93, f93_v2);
int f94_v2(int x) { return x * (94 + 3) + 94 + 1000; }
ARMLP_REPLACE(f94, f94_v2);
int f95_v2(int x) { return x * (95 + 3) + 95 + 1000; }
ARMLP_REPLACE(f95, f95_v2);
int f96_v2(int x) { return x * (96 + 3) + 96 + 1000; }
ARMLP_REPLACE(f96, f96_v2);
int f97_v2(int x) { return x * (97 + 3) + 97 + 1000; }
ARMLP_REPLACE(f97, f97_v2);
int f98_v2(int x) { return x * (98 + 3) + 98 + 1000; }
ARMLP_REPLACE(f98, f98_v2);
int f99_v2(int x) { return x * (99 + 3) + 99 + 1000; }
ARMLP_REPLACE(f99, f99_v2);
