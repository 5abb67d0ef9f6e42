set terminal pngcairo size 960,600 font 'sans,11'
set datafile separator ','
set datafile missing 'NaN'
set key autotitle columnhead
set grid
set output 'goodput_vs_rtt.png'
set title 'WAN link goodput against round-trip time (100 Mbit/s emulated link)'
set xlabel 'RTT (ms)'
set ylabel 'goodput / link rate'
set yrange [0:1.05]
set key bottom left
plot for [i=2:4] 'goodput_vs_rtt.csv' using 1:i with linespoints pt i ps 1.2
