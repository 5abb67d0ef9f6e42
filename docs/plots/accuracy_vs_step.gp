set terminal pngcairo size 1280,600 font 'sans,11'
set datafile separator ','
set datafile missing 'NaN'
set key autotitle columnhead
set grid
set output 'accuracy_vs_step.png'
set multiplot layout 1,2 title 'Fashion-MNIST CNN: test accuracy against step'
set xlabel 'step (global batch 128)'
set ylabel 'test accuracy'
set key bottom right
set title 'all steps'
set xrange [0:*]
set arrow from first 224, graph 0 to first 224, graph 1 nohead dt 2 lw 2
set label 'failover' at first 224, graph 0.05 offset 0.5,0
plot 'accuracy_vs_step.csv' using 1:2 with linespoints pt 1 ps 0.8, \
     'accuracy_vs_step.csv' using 1:3 with linespoints pt 2 ps 0.8, \
     'accuracy_vs_step.csv' using 1:4 with linespoints pt 3 ps 0.8, \
     'accuracy_vs_step.csv' using 1:5 with linespoints pt 4 ps 0.8, \
     'accuracy_vs_step.csv' using 1:6 with linespoints pt 5 ps 0.8, \
     'accuracy_vs_step.csv' using 1:7 with linespoints pt 6 ps 0.8, \
     'accuracy_vs_step.csv' using 1:8 with linespoints pt 7 ps 0.8, \
     'accuracy_failover.csv' using 1:2 with linespoints lw 2 pt 7 ps 0.8
set title 'from step 100 (zoomed)'
set xrange [100:*]
unset key
plot 'accuracy_vs_step.csv' using 1:2 with linespoints pt 1 ps 0.8, \
     'accuracy_vs_step.csv' using 1:3 with linespoints pt 2 ps 0.8, \
     'accuracy_vs_step.csv' using 1:4 with linespoints pt 3 ps 0.8, \
     'accuracy_vs_step.csv' using 1:5 with linespoints pt 4 ps 0.8, \
     'accuracy_vs_step.csv' using 1:6 with linespoints pt 5 ps 0.8, \
     'accuracy_vs_step.csv' using 1:7 with linespoints pt 6 ps 0.8, \
     'accuracy_vs_step.csv' using 1:8 with linespoints pt 7 ps 0.8, \
     'accuracy_failover.csv' using 1:2 with linespoints lw 2 pt 7 ps 0.8
unset multiplot
